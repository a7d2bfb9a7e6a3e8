"""From a log file and settings to embedded training, validation and held-out data sets.

``build_encoder`` makes the text encoder of ``EncoderSettings`` (with the on-disk cache);
``prepare_data`` splits episodes by task type and at random, embeds every text once and cuts
the episodes into windows, with one vocabulary for all splits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .cache import CachedEncoder
from .dataset import EpisodeDataset, Vocabulary, episode_returns_to_go, split_by_task_type, train_val_split
from .encoders import TextEncoder
from .readers import ReadReport, load_episodes
from .schema import Episode
from .settings import DataSettings, EncoderSettings

VOCABULARIES = ("action", "agent", "option")


class MemoEncoder:
    """Remembers every text it embedded in this process, so the train, validation and
    held-out datasets share one pass over the encoder."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._memo: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def identity(self) -> str:
        return self.encoder.identity

    def encode(self, texts: Sequence[str], *, progress: bool = True) -> torch.Tensor:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            self._memo.update(zip(missing, self.encoder.encode(missing, progress=progress)))
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self._memo[t] for t in texts]).float()


def build_encoder(settings: EncoderSettings, *, progress: bool = True,
                  threads: int | None = None) -> MemoEncoder:
    """The text encoder of ``settings``, with the on-disk cache unless it is turned off.

    With the cache, the encoder loads only when some text is not cached yet (a local
    encoder is named by its files). ``progress=False`` also silences transformers'
    messages while it loads. ``threads``: torch's CPU threads while it embeds (None: as set).
    """
    cached = settings.cache_dir != ""
    encoder: Any = TextEncoder(settings.name_or_path, pooling=settings.pooling,
                               normalize=settings.normalize, max_length=settings.max_length,
                               batch_size=settings.batch_size, device=encoder_device(settings.device),
                               lazy=cached, verbose=progress, threads=threads)
    if cached:
        encoder = CachedEncoder(encoder, settings.cache_dir or None)
    return MemoEncoder(encoder)


def encoder_device(name: str) -> torch.device:
    """``auto`` is cuda when available (the current device, which each torchrun rank sets to
    its own), else cpu. Embeddings come back on the CPU either way."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"encoder device {name!r} is not a device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"encoder device {name!r} was asked for but no CUDA device is available")
    return device


def read_log(settings: DataSettings, *, progress: bool = False) -> ReadReport:
    """The episodes of ``settings.path`` (``"-"``: standard input; a pipe or FIFO is read
    once) with the reader's report; a ``DataError`` says why when the log gives no episode
    (it is empty, every record is bad, ...). ``progress``: a reading bar on terminals."""
    report = load_episodes(settings.path, format=settings.format, strict=settings.strict,
                           progress=progress)
    return report.require_episodes()


def print_read_report(report: Any, stream: Any = None) -> list[str]:
    """The read's summary (on ``stream``, default stdout), then every record a lenient read
    skipped, one line each on stderr; returns those lines for the JSONL log."""
    print(report.summary(first_error=False), file=stream or sys.stdout)
    lines = [str(error) for error in report.errors]
    for line in lines:
        print(f"skipped {line}", file=sys.stderr)
    return lines


@dataclass
class PreparedData:
    """The splits of a log as data sets sharing one vocabulary, and what a policy needs to
    know about them (its sizes, the action bank)."""

    train: EpisodeDataset
    val: EpisodeDataset | None
    held_out: EpisodeDataset | None
    vocab: dict[str, list[str]]
    action_bank: torch.Tensor
    state_dim: int
    action_dim: int
    num_agents: int
    num_options: int
    summary: dict[str, Any]


def prepare_data(episodes: Sequence[Episode], encoder: Any, settings: DataSettings, max_seq_len: int,
                 *, vocab: dict[str, list[str]] | None = None, progress: bool = True,
                 context: Any | None = None) -> PreparedData:
    """Split, embed and window the episodes.

    Vocabularies (actions, agents, options) come from ``vocab`` (a saved policy's) or are
    built from all episodes, held-out ones included, so every split shares one id space and
    the action bank holds every known action. Under several processes (``context``: a
    ``DistributedContext``), rank 0 embeds first, filling the on-disk cache the others read.
    """
    distributed = context is not None and context.enabled
    is_main = context is None or context.is_main
    episodes = list(episodes)
    if not episodes:
        raise ValueError(f"no episodes in {settings.path}")
    if settings.held_out_task_types:
        rest, held_out = split_by_task_type(episodes, settings.held_out_task_types)
    else:
        rest, held_out = episodes, []
    train, val = train_val_split(rest, settings.val_fraction, settings.split_seed)
    common = dict(max_seq_len=max_seq_len, gamma=settings.gamma)
    vocab_args = {f"{key}_vocab": Vocabulary(vocab[key]) for key in VOCABULARIES if key in (vocab or {})}
    if distributed and not is_main:
        context.barrier()
    everything = EpisodeDataset(episodes, encoder, progress=progress and is_main, **vocab_args, **common)
    if distributed and is_main:
        context.barrier()
    shared = dict(action_vocab=everything.action_vocab, agent_vocab=everything.agent_vocab,
                  option_vocab=everything.option_vocab, progress=False)
    train_set = EpisodeDataset(train, encoder, window_stride=settings.window_stride, **shared, **common)
    val_set = EpisodeDataset(val, encoder, **shared, **common) if val else None
    held_set = EpisodeDataset(held_out, encoder, **shared, **common) if held_out else None
    summary = {
        "episodes": len(episodes), "train_episodes": len(train), "val_episodes": len(val),
        "held_out_episodes": len(held_out), "task_types": everything.task_types,
        "held_out_task_types": list(settings.held_out_task_types),
        "actions": everything.num_actions, "agents": everything.num_agents,
        "options": everything.num_options,
        "max_return_to_go": highest_return_to_go(train, settings.gamma),
    }
    return PreparedData(
        train=train_set, val=val_set, held_out=held_set,
        vocab={"action": everything.action_vocab.labels, "agent": everything.agent_vocab.labels,
               "option": everything.option_vocab.labels},
        action_bank=everything.action_bank, state_dim=everything.state_dim,
        action_dim=everything.action_dim, num_agents=everything.num_agents,
        num_options=everything.num_options, summary=summary)


def highest_return_to_go(episodes: Sequence[Episode], gamma: float) -> float:
    """The highest return-to-go of any step (no rewards count as zeros, as in training):
    the default target return of a policy conditioned on returns."""
    return max(float(episode_returns_to_go(e, gamma).max()) for e in episodes)
