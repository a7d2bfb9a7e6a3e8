"""HFGeneratorDecoder with a tiny random Llama and a word-level tokenizer built here (no
download): the prompt is the chat template over the shared messages, greedy decoding is
the argmax continuation and repeats exactly, sampling replays by seed, and loading
failures are one clear line."""

import pytest
import torch

from agentfast.decoders import DecodeContext, DecoderError, HFGeneratorDecoder, Reply, chat_messages
from tests.tiny_chat_lm import TEMPLATE, save_tiny_chat_lm, tiny_causal_lm, tiny_chat_tokenizer

NO_SYSTEM_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                      "supported') }}{% endif %}" + TEMPLATE)
CONTEXT = DecodeContext(user_input="It still fails on empty input",
                        candidates=[("Reproduce the failure.", 0.875), ("Apply the fix.", 0.25)],
                        discrete=False, bank=None, history=[("Broken: the parser", "Read the stack trace.")],
                        option="investigate", agent="coder")
PREDICTION = torch.zeros(4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_chat_lm(tmp_path_factory.mktemp("tiny-chat-llm"))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _greedy_by_hand(model, tokenizer, prompt, steps):
    """The argmax continuation, one full forward per token (no generate, no cache)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.cat([ids, torch.tensor([new], dtype=torch.long)], 1)).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    return new


def test_greedy_reply_is_the_argmax_continuation_of_the_templated_prompt(model_dir, offline):
    decoder = HFGeneratorDecoder(str(model_dir), max_new_tokens=6)
    messages = chat_messages(CONTEXT)
    prompt = decoder.prompt(messages)
    assert prompt == "".join(f"<|{m['role']}|> {m['content']} <|end|> " for m in messages) + "<|assistant|>"
    reply = decoder(PREDICTION, CONTEXT)
    tokens = _greedy_by_hand(decoder.model, decoder.tokenizer, prompt, 6)
    expected = decoder.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert expected and reply == Reply(text=expected, source="hf", model=str(model_dir),
                                       truncated=decoder.tokenizer.eos_token_id not in tokens)
    again = HFGeneratorDecoder(model_dir, max_new_tokens=6)
    assert [again(PREDICTION, CONTEXT), decoder(PREDICTION, CONTEXT)] == [reply, reply]


def test_sampling_replays_by_seed_and_leaves_the_global_generator_alone(model_dir):
    first = HFGeneratorDecoder(model_dir, temperature=1.0, seed=3, max_new_tokens=8, local_files_only=True)
    state = torch.get_rng_state()
    replies = [first(PREDICTION, CONTEXT).text for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    replay = HFGeneratorDecoder(model_dir, temperature=1.0, seed=3, max_new_tokens=8, local_files_only=True)
    assert [replay(PREDICTION, CONTEXT).text for _ in range(2)] == replies
    shifted = HFGeneratorDecoder(model_dir, temperature=1.0, seed=4, max_new_tokens=8, local_files_only=True)
    assert shifted(PREDICTION, CONTEXT).text == replies[1]  # the n-th reply uses seed + n


def test_dtype_device_and_an_in_memorytiny_causal_lm(model_dir):
    decoder = HFGeneratorDecoder(model_dir, dtype="bfloat16", device="cpu", max_new_tokens=2,
                                 local_files_only=True)
    assert {p.dtype for p in decoder.model.parameters()} == {torch.bfloat16}
    assert decoder(PREDICTION, CONTEXT).source == "hf"
    tokenizer = tiny_chat_tokenizer()
    model = tiny_causal_lm(len(tokenizer))
    in_memory = HFGeneratorDecoder(model, tokenizer, max_new_tokens=4)
    from_disk = HFGeneratorDecoder(model_dir, max_new_tokens=4, local_files_only=True)
    assert in_memory(PREDICTION, CONTEXT).text == from_disk(PREDICTION, CONTEXT).text
    with pytest.raises(ValueError, match="an in-memory model needs its tokenizer"):
        HFGeneratorDecoder(model)
    with pytest.raises(ValueError, match="dtype must be auto, float32, float16, bfloat16"):
        HFGeneratorDecoder(model, tokenizer, dtype="int8")


def test_templates_without_a_system_role_or_without_any_template(model_dir):
    tokenizer = tiny_chat_tokenizer(NO_SYSTEM_TEMPLATE)
    decoder = HFGeneratorDecoder(tiny_causal_lm(len(tokenizer)), tokenizer, max_new_tokens=2)
    messages = chat_messages(CONTEXT)
    assert decoder.prompt(messages).startswith(
        f"<|user|> {messages[0]['content']}\n\n{messages[1]['content']} <|end|> <|assistant|> ")
    bare = tiny_chat_tokenizer(None)
    with pytest.raises(DecoderError, match="tokenizer has no chat template; pass chat_template="):
        HFGeneratorDecoder(tiny_causal_lm(len(bare)), bare)
    given = HFGeneratorDecoder(tiny_causal_lm(len(bare)), bare, chat_template=TEMPLATE, max_new_tokens=2)
    assert given.prompt(messages) == HFGeneratorDecoder(model_dir, local_files_only=True).prompt(messages)


def test_a_prompt_beyond_the_context_fails_or_falls_back():
    tokenizer = tiny_chat_tokenizer()
    short = tiny_causal_lm(len(tokenizer), max_positions=64)
    with pytest.raises(DecoderError, match=r"the prompt is \d+ tokens and up to 16 new ones may follow, "
                                           r"more than .*'s 64-token context"):
        HFGeneratorDecoder(short, tokenizer, max_new_tokens=16)(PREDICTION, CONTEXT)
    reply = HFGeneratorDecoder(short, tokenizer, max_new_tokens=16, fallback=True)(PREDICTION, CONTEXT)
    assert reply.text == "Reproduce the failure." and reply.fallback.startswith("hf decoder: the prompt is")


def test_loading_failures_say_what_is_wrong(tmp_path, offline):
    with pytest.raises(DecoderError, match="'someorg/no-such-chat-model' is not in the local Hugging Face "
                                           "cache and the hub is off"):
        HFGeneratorDecoder("someorg/no-such-chat-model")
    with pytest.raises(DecoderError, match=r"'\./no/such/dir': no such directory"):
        HFGeneratorDecoder("./no/such/dir")
    with pytest.raises(DecoderError, match="the directory does not hold a loadable causal LM and tokenizer"):
        HFGeneratorDecoder(tmp_path)
