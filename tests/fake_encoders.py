"""Text encoders for tests, all offline: a hashing stand-in and tiny random transformers.

* ``HashEncoder``: each text maps to a fixed pseudo-random vector (seeded by its hash); it
  records what it was asked to embed, so tests can see cache hits skip it.
* ``word_tokenizer``: a word-level Hugging Face tokenizer over given words, built in memory.
* ``tiny_encoder``: a ``TextEncoder`` around a 1-layer random GPT-2 with that tokenizer.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch

WORDS = ("the a test fails passes run code bug fix explain review plan file error value "
         "let me first reproduce problem check it works hello world").split()


class HashEncoder:
    """Texts -> vectors seeded by a hash of the text (same text, same vector).

    ``normalize`` makes them unit vectors (what the real default encoder returns).
    """

    def __init__(self, dim: int = 8, tag: str = "hash", normalize: bool = False) -> None:
        self.dim = dim
        self.normalize = normalize
        self.identity = f"{tag}|dim={dim}|normalize={normalize}"
        self.calls: list[list[str]] = []

    @staticmethod
    def vector(text: str, dim: int = 8, normalize: bool = False) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
        return vector / vector.norm() if normalize else vector

    def encode(self, texts, *, progress: bool = True) -> torch.Tensor:
        texts = list(texts)
        self.calls.append(texts)
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self.vector(t, self.dim, self.normalize) for t in texts])


def word_tokenizer(texts: Iterable[str] = WORDS, model_max_length: int | None = None):
    """A word-level tokenizer over the words of ``texts`` (no files, no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[EOS]": 4}
    splitter = pre_tokenizers.Whitespace()
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = splitter
    limits = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", eos_token="[EOS]",
                                   **limits)


def tiny_gpt2(seed: int = 0, n_positions: int = 64, vocab_size: int = len(WORDS) + 5):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32,
                        n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Model(config).eval()


def tiny_encoder(pooling: str = "mean", seed: int = 0, **kwargs):
    from agentfast.data import TextEncoder

    return TextEncoder.from_model(tiny_gpt2(seed), word_tokenizer(), pooling=pooling, **kwargs)
