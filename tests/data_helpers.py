"""Shared helpers for the data tests: a tiny random GPT-2 and a fake encoder, no downloads."""

from __future__ import annotations

import hashlib

import torch

WORDS = ("the a test fails passes run code bug fix explain review plan file error value "
         "let me first reproduce problem check it works hello world").split()


def tiny_tokenizer():
    """A word-level tokenizer built in memory (no files, no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                   unk_token="[UNK]", eos_token="[EOS]")


def tiny_gpt2(seed: int = 0, n_positions: int = 64):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(WORDS) + 3, n_positions=n_positions, n_embd=32,
                        n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Model(config).eval()


def tiny_encoder(pooling: str = "mean", seed: int = 0, **kwargs):
    from agentfast.data import TextEncoder

    return TextEncoder.from_model(tiny_gpt2(seed), tiny_tokenizer(), pooling=pooling, **kwargs)


class HashEncoder:
    """A deterministic stand-in encoder: each text maps to a fixed pseudo-random vector.

    It counts the texts it was asked to embed, so tests can see cache hits skip it.
    """

    def __init__(self, dim: int = 8, tag: str = "hash") -> None:
        self.dim = dim
        self.identity = f"{tag}|dim={dim}"
        self.calls: list[list[str]] = []

    @staticmethod
    def vector(text: str, dim: int = 8) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return torch.randn(dim, generator=torch.Generator().manual_seed(seed))

    def encode(self, texts, *, progress: bool = True) -> torch.Tensor:
        texts = list(texts)
        self.calls.append(texts)
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self.vector(t, self.dim) for t in texts])
