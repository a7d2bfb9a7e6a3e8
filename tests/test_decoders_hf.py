"""HFGeneratorDecoder with a tiny random Llama and a word-level tokenizer built here (no
download): the prompt is the chat template over the shared messages, greedy decoding is
the argmax continuation and repeats exactly, sampling replays by seed, and loading
failures are one clear line."""

import pytest
import torch

from agentfast.decoders import DecodeContext, DecoderError, HFGeneratorDecoder, Reply, chat_messages

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_SYSTEM_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                      "supported') }}{% endif %}" + TEMPLATE)
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ("the a it fails still on empty input run tests fix failure apply reproduce parser broken "
         "read stack trace open file error header value check log step agent reply action known").split()
CONTEXT = DecodeContext(user_input="It still fails on empty input",
                        candidates=[("Reproduce the failure.", 0.875), ("Apply the fix.", 0.25)],
                        discrete=False, bank=None, history=[("Broken: the parser", "Read the stack trace.")],
                        option="investigate", agent="coder")
PREDICTION = torch.zeros(4)


def _tokenizer(template=TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS + [f"w{i}" for i in range(40)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>",
                                        additional_special_tokens=SPECIAL[4:])
    tokenizer.chat_template = template
    return tokenizer


def _model(vocab_size, max_positions=512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-chat-llm")
    tokenizer = _tokenizer()
    _model(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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


def test_dtype_device_and_an_in_memory_model(model_dir):
    decoder = HFGeneratorDecoder(model_dir, dtype="bfloat16", device="cpu", max_new_tokens=2,
                                 local_files_only=True)
    assert {p.dtype for p in decoder.model.parameters()} == {torch.bfloat16}
    assert decoder(PREDICTION, CONTEXT).source == "hf"
    tokenizer = _tokenizer()
    model = _model(len(tokenizer))
    in_memory = HFGeneratorDecoder(model, tokenizer, max_new_tokens=4)
    from_disk = HFGeneratorDecoder(model_dir, max_new_tokens=4, local_files_only=True)
    assert in_memory(PREDICTION, CONTEXT).text == from_disk(PREDICTION, CONTEXT).text
    with pytest.raises(ValueError, match="an in-memory model needs its tokenizer"):
        HFGeneratorDecoder(model)
    with pytest.raises(ValueError, match="dtype must be auto, float32, float16, bfloat16"):
        HFGeneratorDecoder(model, tokenizer, dtype="int8")


def test_templates_without_a_system_role_or_without_any_template(model_dir):
    tokenizer = _tokenizer(NO_SYSTEM_TEMPLATE)
    decoder = HFGeneratorDecoder(_model(len(tokenizer)), tokenizer, max_new_tokens=2)
    messages = chat_messages(CONTEXT)
    assert decoder.prompt(messages).startswith(
        f"<|user|> {messages[0]['content']}\n\n{messages[1]['content']} <|end|> <|assistant|> ")
    bare = _tokenizer(None)
    with pytest.raises(DecoderError, match="tokenizer has no chat template; pass chat_template="):
        HFGeneratorDecoder(_model(len(bare)), bare)
    given = HFGeneratorDecoder(_model(len(bare)), bare, chat_template=TEMPLATE, max_new_tokens=2)
    assert given.prompt(messages) == HFGeneratorDecoder(model_dir, local_files_only=True).prompt(messages)


def test_a_prompt_beyond_the_context_fails_or_falls_back():
    tokenizer = _tokenizer()
    short = _model(len(tokenizer), max_positions=64)
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
