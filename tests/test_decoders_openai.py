"""OpenAIChatDecoder against a real chat-completions server on 127.0.0.1 (tests/chat_server.py):
what it sends, what it makes of replies and of OpenAI-format errors, retries, timeouts,
and the retrieval fallback. No test reaches the network."""

import socket

import pytest
import torch

from agentfast.decoders import DecodeContext, DecoderError, Reply, chat_messages, make_decoder

pytest.importorskip("openai")

from agentfast.decoders import OpenAIChatDecoder  # noqa: E402
from tests.chat_server import chat_server  # noqa: E402,F401 (the fixture)

CANDIDATES = [("Reproduce the failure.", 0.91), ("Apply the fix.", 0.42)]
CONTEXT = DecodeContext(user_input="It still fails", candidates=CANDIDATES, discrete=False, bank=None,
                        history=[("Broken: the parser", "Read the stack trace.")], option="investigate")
PREDICTION = torch.zeros(4)


def _decoder(server, **options):
    options = {"api_key": "sk-test", "max_retries": 0, "timeout": 10.0, **options}
    return OpenAIChatDecoder("test-model", base_url=server.url, **options)


def test_the_reply_comes_from_the_endpoint_and_the_request_is_the_protocol(chat_server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server.url)
    chat_server.answer("  Run it with an empty header.\n", model="test-model-2024")
    decoder = OpenAIChatDecoder("test-model", api_key_env="MY_KEY", temperature=0.3, max_tokens=64)
    reply = decoder(PREDICTION, CONTEXT)
    assert reply == Reply(text="Run it with an empty header.", source="openai", model="test-model-2024")
    [request] = chat_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-from-env"
    assert request.headers["content-type"].startswith("application/json")
    body = request.body
    assert body["model"] == "test-model"
    assert body["messages"] == chat_messages(CONTEXT)
    assert body["temperature"] == 0.3 and body["max_tokens"] == 64
    assert body.get("stream", False) is False
    assert set(body) <= {"model", "messages", "temperature", "max_tokens", "stream"}


def test_unset_temperature_and_max_tokens_are_left_to_the_endpoint(chat_server):
    chat_server.answer("ok")
    _decoder(chat_server, max_tokens=None)(PREDICTION, CONTEXT)
    assert "temperature" not in chat_server.requests[0].body and "max_tokens" not in chat_server.requests[0].body


def test_a_local_endpoint_needs_no_key_but_openai_does(chat_server, monkeypatch):
    chat_server.answer("ok")
    OpenAIChatDecoder("local", base_url=chat_server.url, max_retries=0)(PREDICTION, CONTEXT)
    assert chat_server.requests[0].headers["authorization"] == "Bearer EMPTY"
    with pytest.raises(DecoderError, match=r"no API key for https://api.openai.com/v1: set AZ_KEY"):
        OpenAIChatDecoder("gpt-4o-mini", api_key_env="AZ_KEY")


def test_a_refused_key_is_one_clear_line_and_is_not_retried(chat_server):
    chat_server.fail(401, "Incorrect API key provided: sk-test.", code="invalid_api_key")
    with pytest.raises(DecoderError) as error:
        _decoder(chat_server, max_retries=3, api_key_env="TEAM_KEY")(PREDICTION, CONTEXT)
    message = str(error.value)
    assert message == (f"{chat_server.url} refused the API key (HTTP 401: Incorrect API key provided: "
                       "sk-test.); set TEAM_KEY to a valid key")
    assert len(chat_server.requests) == 1


def test_an_unknown_model_is_named(chat_server):
    chat_server.fail(404, "The model `test-model` does not exist or you do not have access to it.",
                code="model_not_found")
    with pytest.raises(DecoderError, match=r"^model 'test-model' not found at http://127\.0\.0\.1:\d+/v1 "
                                            r"\(HTTP 404: The model `test-model` does not exist"):
        _decoder(chat_server)(PREDICTION, CONTEXT)


def test_rate_limiting_waits_as_long_as_retry_after_says_then_succeeds(chat_server):
    chat_server.fail(429, "Rate limit reached for requests", code="rate_limit_exceeded",
                headers={"Retry-After": "1"})
    chat_server.answer("after the wait")
    reply = _decoder(chat_server, max_retries=2)(PREDICTION, CONTEXT)
    assert reply.text == "after the wait" and reply.fallback is None
    first, second = chat_server.requests
    assert second.body == first.body
    # The client's own backoff would wait at most 0.5 s; the chat_server asked for 1 s.
    assert second.received - first.received >= 1.0


def test_server_errors_are_retried_with_backoff_until_the_budget_is_spent(chat_server):
    for _ in range(2):
        chat_server.fail(500, "The chat_server had an error while processing your request.",
                    headers={"retry-after-ms": "10"})
    chat_server.answer("third time")
    assert _decoder(chat_server, max_retries=2)(PREDICTION, CONTEXT).text == "third time"
    assert len(chat_server.requests) == 3

    for _ in range(2):
        chat_server.fail(503, "Service unavailable", headers={"retry-after-ms": "10"})
    with pytest.raises(DecoderError) as error:
        _decoder(chat_server, max_retries=1)(PREDICTION, CONTEXT)
    assert str(error.value) == (f"{chat_server.url} failed (HTTP 503: Service unavailable; retried once "
                                "with backoff)")
    assert len(chat_server.requests) == 5


def test_a_slow_reply_times_out_and_can_fall_back_to_retrieval(chat_server):
    chat_server.answer("too late", delay=30)
    with pytest.raises(DecoderError, match=r"did not answer within 0\.5 s \(not retried\)$"):
        _decoder(chat_server, timeout=0.5)(PREDICTION, CONTEXT)
    chat_server.answer("too late again", delay=30)
    reply = _decoder(chat_server, timeout=0.5, fallback=True)(PREDICTION, CONTEXT)
    assert reply.text == CANDIDATES[0][0] and reply.source == "retrieval" and reply.model is None
    assert reply.fallback == f"openai decoder: {chat_server.url} did not answer within 0.5 s (not retried)"


def test_an_unreachable_endpoint_says_so():
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    decoder = OpenAIChatDecoder("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(DecoderError, match=rf"^cannot reach http://127\.0\.0\.1:{port}/v1: .+ \(not retried\)$"):
        decoder(PREDICTION, CONTEXT)


def test_a_model_that_takes_only_max_completion_tokens_is_asked_again(chat_server):
    chat_server.fail(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                     "Use 'max_completion_tokens' instead.", code="unsupported_parameter")
    chat_server.answer("fine")
    chat_server.answer("again")
    decoder = _decoder(chat_server, max_tokens=32)
    assert decoder(PREDICTION, CONTEXT).text == "fine"
    assert decoder(PREDICTION, CONTEXT).text == "again"
    assert [sorted(k for k in r.body if "tokens" in k) for r in chat_server.requests] == [
        ["max_tokens"], ["max_completion_tokens"], ["max_completion_tokens"]]
    assert chat_server.requests[1].body["max_completion_tokens"] == 32


def test_a_cut_or_empty_reply_is_reported(chat_server):
    chat_server.answer("Run the", finish_reason="length")
    chat_server.answer(None, finish_reason="content_filter")
    decoder = _decoder(chat_server)
    assert decoder(PREDICTION, CONTEXT).truncated
    with pytest.raises(DecoderError, match="model 'test-model' returned no text \\(finish_reason 'content_filter'\\)"):
        decoder(PREDICTION, CONTEXT)


def test_make_decoder_builds_it_and_settings_are_checked(chat_server):
    assert isinstance(make_decoder("openai", model="m", base_url=chat_server.url), OpenAIChatDecoder)
    with pytest.raises(ValueError, match="temperature must be in \\[0, 2\\], got 3"):
        _decoder(chat_server, temperature=3)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        _decoder(chat_server, max_retries=-1)
    with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
        _decoder(chat_server, timeout=0)
