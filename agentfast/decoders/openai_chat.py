"""Replies written by any chat-completions endpoint, through the official ``openai`` client.

OpenAI itself, Azure OpenAI's v1 endpoint (``https://RESOURCE.openai.azure.com/openai/v1``,
the deployment name as the model), and local servers that speak the protocol: vLLM
(``http://localhost:8000/v1``), llama.cpp's ``llama-server`` (``http://localhost:8080/v1``),
Ollama (``http://localhost:11434/v1``). Install with ``pip install 'agentfast[openai]'``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .base import DecoderError, GeneratorDecoder, Reply

__all__ = ["DEFAULT_BASE_URL", "OpenAIChatDecoder"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# What local servers accept as a key when they check none (vLLM's documented placeholder).
_NO_KEY = "EMPTY"


class OpenAIChatDecoder(GeneratorDecoder):
    """Asks a chat-completions endpoint for the reply (streaming off).

    Args:
        model: the model (Azure: deployment) name the endpoint serves.
        base_url: the API root; default ``$OPENAI_BASE_URL``, else OpenAI's.
        api_key: the key itself; default: the environment variable ``api_key_env``. An
            endpoint other than OpenAI's may go without one (local servers check none).
        api_key_env: where the key is read from (e.g. ``AZURE_OPENAI_API_KEY``).
        temperature: sampling temperature; None leaves the endpoint's default.
        max_tokens: the longest reply in tokens (None: the endpoint's limit). Models that
            only take ``max_completion_tokens`` get it under that name.
        timeout: seconds one request may take.
        max_retries: retries of a request that timed out, could not connect, or got 408,
            409, 429 or 5xx, with exponential backoff (0.5 s doubling, up to 8 s) or the
            server's ``Retry-After`` when it sends one (the ``openai`` client's policy).
        fallback: when the endpoint fails, reply with the best-ranked known action and say
            so in the ``Reply`` instead of raising ``DecoderError``.
        instructions: the system message's instructions (default ``DEFAULT_INSTRUCTIONS``).
        client: an ``openai.OpenAI``-like client to use instead of building one.
    """

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", temperature: float | None = None,
                 max_tokens: int | None = 256, timeout: float = 60.0, max_retries: int = 3,
                 fallback: bool = False, instructions: str | None = None,
                 client: Any | None = None) -> None:
        super().__init__(fallback=fallback, instructions=instructions)
        _check_settings(model, temperature, max_tokens, timeout, max_retries)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self._max_tokens_field = "max_tokens"
        self._openai = _import_openai()
        self._client = client if client is not None else self._openai.OpenAI(
            api_key=self._api_key(api_key), base_url=self.base_url, timeout=self.timeout,
            max_retries=self.max_retries)

    def __repr__(self) -> str:
        return f"OpenAIChatDecoder(model={self.model!r}, base_url={self.base_url!r})"

    def _api_key(self, given: str | None) -> str:
        key = given if given is not None else os.environ.get(self.api_key_env, "")
        if key:
            return key
        if self.base_url == DEFAULT_BASE_URL:
            raise DecoderError(f"no API key for {self.base_url}: set {self.api_key_env} "
                               "(or name another variable with api_key_env / --api-key-env)")
        return _NO_KEY

    def generate(self, messages: list[dict[str, str]]) -> Reply:
        completion = self._create(messages)
        choices = getattr(completion, "choices", None)
        if not choices:
            raise DecoderError(f"{self.base_url} answered without a chat completion "
                               f"(got {_summary(completion)})")
        choice = choices[0]
        message = choice.message
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise DecoderError(f"model {self.model!r} refused: {_one_line(refusal)}")
        text = (message.content or "").strip()
        if not text:
            raise DecoderError(f"model {self.model!r} returned no text "
                               f"(finish_reason {choice.finish_reason!r})")
        return Reply(text=text, source=self.name, model=getattr(completion, "model", None) or self.model,
                     truncated=choice.finish_reason == "length")

    def _create(self, messages: list[dict[str, str]]) -> Any:
        """One chat completion; a model that refuses ``max_tokens`` is asked again with
        ``max_completion_tokens`` (OpenAI's reasoning models take only that name)."""
        while True:
            params: dict[str, Any] = {"model": self.model, "messages": messages, "stream": False}
            if self.temperature is not None:
                params["temperature"] = self.temperature
            if self.max_tokens is not None:
                params[self._max_tokens_field] = self.max_tokens
            try:
                return self._client.chat.completions.create(**params)
            except self._openai.BadRequestError as error:
                if self._max_tokens_field == "max_tokens" and self.max_tokens is not None \
                        and "max_completion_tokens" in _detail(error):
                    self._max_tokens_field = "max_completion_tokens"
                    continue
                raise DecoderError(self._describe(error)) from error
            except self._openai.APIError as error:
                raise DecoderError(self._describe(error)) from error

    def _describe(self, error: Exception) -> str:
        """One line that says what failed and what to do about it."""
        openai, where = self._openai, self.base_url
        retried = {0: "not retried", 1: "retried once with backoff"}.get(
            self.max_retries, f"retried {self.max_retries} times with backoff")
        if isinstance(error, openai.APITimeoutError):
            return f"{where} did not answer within {self.timeout:g} s ({retried})"
        if isinstance(error, openai.APIConnectionError):
            cause = error.__cause__ or error
            return f"cannot reach {where}: {_one_line(str(cause) or type(cause).__name__)} ({retried})"
        status = getattr(error, "status_code", None)
        detail = _detail(error)
        if status in (401, 403):
            return (f"{where} refused the API key (HTTP {status}: {detail}); set "
                    f"{self.api_key_env} to a valid key")
        if status == 404:
            return (f"model {self.model!r} not found at {where} (HTTP 404: {detail}); check the "
                    "model name, and that the base URL is the API root (e.g. http://localhost:8000/v1)")
        if status == 429:
            return f"{where} is rate limiting (HTTP 429: {detail}; {retried})"
        if status is not None and status >= 500:
            return f"{where} failed (HTTP {status}: {detail}; {retried})"
        if status is not None:
            return f"{where} rejected the request (HTTP {status}: {detail})"
        return f"{where}: {detail}"


def _check_settings(model: str, temperature: float | None, max_tokens: int | None,
                    timeout: float, max_retries: int) -> None:
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"the openai decoder needs a model name, got {model!r}")
    if temperature is not None and not 0 <= temperature <= 2:
        raise ValueError(f"temperature must be in [0, 2], got {temperature}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as error:
        raise DecoderError("the openai decoder needs the openai package: "
                           "pip install 'agentfast[openai]'") from error
    return openai


def _detail(error: Exception) -> str:
    """The server's own message (OpenAI's error format: {"error": {"message": ...}})."""
    body = getattr(error, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return _one_line(str(body["message"]))
    if isinstance(body, str) and body.strip():
        return _one_line(body)
    return _one_line(getattr(error, "message", None) or str(error) or type(error).__name__)


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _summary(value: Any) -> str:
    return _one_line(repr(value), 120)
