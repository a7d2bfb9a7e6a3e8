"""A tiny randomly initialised chat model for the generator tests, built here (no download):
a 2-layer Llama with hidden size 32 and a word-level tokenizer with a chat template."""

from __future__ import annotations

from pathlib import Path

import torch

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = ("the a it fails still on empty input run tests fix failure apply reproduce parser broken "
         "read stack trace open file error header value check log step agent reply action known").split()


def tiny_chat_tokenizer(template: str | None = TEMPLATE):
    """Whitespace-split words (unknown ones become <unk>), the chat roles as special tokens."""
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


def tiny_causal_lm(vocab_size: int, max_positions: int = 512):
    """The same random weights on every call (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return LlamaForCausalLM(config).eval()


def save_tiny_chat_lm(directory: Path) -> Path:
    tokenizer = tiny_chat_tokenizer()
    tiny_causal_lm(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
