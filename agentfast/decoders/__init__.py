"""Decoders: how a policy's predicted action becomes a reply.

* ``retrieval`` (``NearestNeighbourDecoder``): the best-ranked known action. Offline, exact.
* ``openai`` (``OpenAIChatDecoder``): any chat-completions endpoint writes the reply
  (OpenAI, Azure, vLLM, llama.cpp, Ollama), through the ``openai`` client.
* ``hf`` (``HFGeneratorDecoder``): a local Hugging Face causal LM writes it.

The generators see the same prompt (``chat_messages``): the conversation so far, the
nearest known actions with their scores, and the option / acting agent of hierarchical
and multi-agent policies. Importing this package imports neither openai nor transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import (DEFAULT_INSTRUCTIONS, DecodeContext, Decoder, DecoderError, GeneratorDecoder,
                   Reply, chat_messages)
from .retrieval import NearestNeighbourDecoder

DECODERS = ("retrieval", "openai", "hf")

_LAZY = {"OpenAIChatDecoder": "openai_chat", "HFGeneratorDecoder": "hf_generate"}

__all__ = ["DECODERS", "DEFAULT_INSTRUCTIONS", "DecodeContext", "Decoder", "DecoderError",
           "GeneratorDecoder", "HFGeneratorDecoder", "NearestNeighbourDecoder", "OpenAIChatDecoder",
           "Reply", "chat_messages", "make_decoder"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'agentfast.decoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def make_decoder(kind: str, **options: Any) -> Decoder:
    """The decoder named ``kind`` ("retrieval", "openai" or "hf") built with ``options``
    (the keyword arguments of ``OpenAIChatDecoder`` / ``HFGeneratorDecoder``)."""
    if kind == "retrieval":
        if options:
            raise ValueError(f"the retrieval decoder takes no options, got {', '.join(sorted(options))}")
        return NearestNeighbourDecoder()
    if kind == "openai":
        return __getattr__("OpenAIChatDecoder")(**options)
    if kind == "hf":
        return __getattr__("HFGeneratorDecoder")(**options)
    raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {kind!r}")
