"""A chat-completions server on 127.0.0.1 for the decoder tests (no network call ever).

``ChatServer`` speaks the protocol's non-streaming form: POST /v1/chat/completions with a
JSON body, answered with a ``chat.completion`` object, or with an error in OpenAI's error
format (``{"error": {"message", "type", "param", "code"}}``). Tests queue the answers
(``server.answer(...)`` / ``server.fail(...)``) and read what the client sent
(``server.requests``). Test modules import the ``chat_server`` fixture from here.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

# The runner's own OpenAI settings and proxies must not leak into the tests.
OUTSIDE_SETTINGS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
                    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               404: "invalid_request_error", 429: "requests", 500: "server_error"}


def completion(text: str | None, model: str = "served-model", finish_reason: str = "stop") -> dict[str, Any]:
    """A ``chat.completion`` object as the API returns it."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": code}}


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received: float  # time.monotonic()


class ChatServer:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def answer(self, text: str | None, *, delay: float = 0.0, **fields: Any) -> None:
        self._answers.append(Answer(200, completion(text, **fields), delay=delay))

    def fail(self, status: int, message: str, *, code: str | None = None,
             headers: dict[str, str] | None = None) -> None:
        self._answers.append(Answer(status, error_body(status, message, code), headers or {}))

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self, request: Request) -> Answer:
        with self._lock:
            self.requests.append(request)
            if not self._answers:
                return Answer(500, error_body(500, "the test queued no answer for this request"))
            return self._answers.pop(0)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()},
                                  json.loads(raw or b"{}"), time.monotonic())
                if self.path != "/v1/chat/completions":
                    answer = Answer(404, error_body(404, f"Invalid URL (POST {self.path})"))
                    server.requests.append(request)
                else:
                    answer = server._next(request)
                if answer.delay and server._stop.wait(answer.delay):
                    return
                payload = json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def chat_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    for name in OUTSIDE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    server = ChatServer()
    yield server
    server.close()
