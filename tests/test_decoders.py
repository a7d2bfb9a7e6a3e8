"""Decoders: the generators' prompt field by field, the retrieval decoder, the factory, and
that importing them pulls in neither openai nor transformers."""

import subprocess
import sys

import pytest
import torch

from agentfast.decoders import (DEFAULT_INSTRUCTIONS, DecodeContext, DecoderError, GeneratorDecoder,
                                NearestNeighbourDecoder, Reply, chat_messages, make_decoder)

CANDIDATES = [("Reproduce the failure.", 0.9123), ("Apply the fix.", 0.5), ("Run the tests.", -0.25)]
HISTORY = [("Broken: parse_header crashes", "Read the stack trace."), ("It is in parser.py", "Open parser.py.")]


def _context(**overrides):
    fields = dict(user_input="It fails on empty input", candidates=CANDIDATES, discrete=False,
                  bank=None, history=HISTORY)
    fields.update(overrides)
    return DecodeContext(**fields)


def test_the_prompt_carries_the_conversation_and_the_ranked_actions():
    messages = chat_messages(_context())
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == [
        "Broken: parse_header crashes", "Read the stack trace.", "It is in parser.py", "Open parser.py.",
        "It fails on empty input"]
    system = messages[0]["content"].split("\n")
    assert system[0] == DEFAULT_INSTRUCTIONS and system[1] == ""
    assert system[2] == "Known actions nearest to the prediction (cosine similarity to the predicted action):"
    assert system[3:] == ["1. (0.912) Reproduce the failure.", "2. (0.500) Apply the fix.",
                          "3. (-0.250) Run the tests."]


def test_the_prompt_names_the_option_the_agent_and_probabilities():
    system = chat_messages(_context(discrete=True, option="investigate", agent="coder", history=[]),
                           instructions="Be brief.")[0]["content"].split("\n")
    assert system[0] == "Be brief."
    assert system[2] == "Known actions nearest to the prediction (probability under the policy):"
    assert system[-2:] == ["The policy's current option (sub-task): investigate", "The agent replying: coder"]


def test_a_multi_line_action_stays_inside_its_numbered_entry():
    context = _context(candidates=[("line one\nline two", 1.0), ("other", 0.0)])
    system = chat_messages(context)[0]["content"]
    assert "1. (1.000) line one\n   line two\n2. (0.000) other" in system
    with pytest.raises(ValueError, match="no candidate actions"):
        chat_messages(_context(candidates=[]))


def test_retrieval_replies_with_the_best_ranked_action():
    reply = NearestNeighbourDecoder()(torch.zeros(4), _context())
    assert reply == Reply(text="Reproduce the failure.", source="retrieval")


class _Failing(GeneratorDecoder):
    name = "failing"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def generate(self, messages):
        self.seen.append(messages)
        raise DecoderError("the endpoint is down")


def test_a_generator_failure_raises_or_falls_back_and_says_so():
    with pytest.raises(DecoderError, match="the endpoint is down"):
        _Failing()(torch.zeros(4), _context())
    decoder = _Failing(fallback=True, instructions="Be brief.")
    reply = decoder(torch.zeros(4), _context())
    assert reply == Reply(text="Reproduce the failure.", source="retrieval",
                          fallback="failing decoder: the endpoint is down")
    assert decoder.seen == [chat_messages(_context(), "Be brief.")]


def test_make_decoder_checks_the_name_and_options():
    assert isinstance(make_decoder("retrieval"), NearestNeighbourDecoder)
    with pytest.raises(ValueError, match="decoder must be one of retrieval, openai, hf, got 'gpt'"):
        make_decoder("gpt")
    with pytest.raises(ValueError, match="the retrieval decoder takes no options, got model"):
        make_decoder("retrieval", model="x")
    with pytest.raises(ValueError, match="needs a model name"):
        make_decoder("openai", model="")


def test_importing_the_decoders_imports_neither_openai_nor_transformers():
    code = ("import sys, agentfast, agentfast.decoders, agentfast.cli; agentfast.cli.build_parser(); "
            "print(sorted(m for m in ('openai', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
