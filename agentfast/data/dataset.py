"""Episodes to padded training batches: vocabularies, windows, returns-to-go, splits.

``EpisodeDataset`` embeds every distinct state and action text once, cuts episodes longer
than ``max_seq_len`` into windows, and yields one window per item; ``collate_episodes``
pads a list of windows to the longest one. Returns-to-go and termination labels are
computed over the whole episode before it is cut, so a window's first step still knows the
reward to come, and a window's last step ends its option only where the episode's does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..visibility import MAX_AGENTS, METADATA_KEY, visibility_from_map
from .readers.report import DEFAULT_AGENT
from .schema import Episode

IGNORE_INDEX = -100  # action_ids at padding; torch's cross_entropy ignores it by default


class Vocabulary:
    """Labels <-> contiguous ids, in order of first appearance (deterministic for a data set)."""

    def __init__(self, labels: Iterable[str] = ()) -> None:
        self._labels: list[str] = []
        self._ids: dict[str, int] = {}
        for label in labels:
            self.add(label)

    @classmethod
    def build(cls, labels: Iterable[str]) -> "Vocabulary":
        return cls(labels)

    def add(self, label: str) -> int:
        """Id of ``label``, appending it when new (existing ids never change)."""
        label = str(label)
        if label not in self._ids:
            self._ids[label] = len(self._labels)
            self._labels.append(label)
        return self._ids[label]

    def index(self, label: str) -> int:
        try:
            return self._ids[str(label)]
        except KeyError:
            shown = self._labels[:10] + (["..."] if len(self._labels) > 10 else [])
            raise KeyError(f"unknown label {label!r}; the vocabulary has {shown}") from None

    def label(self, i: int) -> str:
        if not 0 <= i < len(self._labels):
            raise IndexError(f"id {i} is outside the vocabulary of {len(self._labels)} labels")
        return self._labels[i]

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    def copy(self) -> "Vocabulary":
        return Vocabulary(self._labels)

    def to_dict(self) -> dict[str, list[str]]:
        return {"labels": list(self._labels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Vocabulary":
        return cls(data["labels"])

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, label: object) -> bool:
        return str(label) in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other._labels == self._labels

    def __repr__(self) -> str:
        return f"Vocabulary({self._labels!r})"


def discounted_returns(rewards: Sequence[float], gamma: float) -> torch.Tensor:
    """Returns-to-go: ``R[t] = r[t] + gamma * R[t+1]``, float32 [len(rewards)]."""
    out = torch.zeros(len(rewards), dtype=torch.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out.float()


def episode_returns_to_go(episode: Episode, gamma: float) -> torch.Tensor:
    """The episode's returns-to-go, float32 [T]; an episode without rewards has zeros."""
    return discounted_returns(episode.rewards or [0.0] * len(episode), gamma)


def termination_targets(options: torch.Tensor) -> torch.Tensor:
    """float32 [T]: 1.0 where the option of step t ends after t, for one whole episode.

    An option ends where the next step's option differs, and at the episode's last step.
    """
    labels = torch.ones(len(options), dtype=torch.float32)
    labels[:-1] = (options[1:] != options[:-1]).float()
    return labels


def window_starts(length: int, max_seq_len: int, stride: int) -> list[int]:
    """Starts of windows of at most ``max_seq_len`` steps, ``stride`` apart, covering every step."""
    starts = [0]
    while starts[-1] + max_seq_len < length:
        starts.append(starts[-1] + stride)
    return starts


@dataclass
class _EncodedEpisode:
    """One episode as ids: text rows into the embedding table and vocabulary ids."""

    state_rows: torch.Tensor
    action_rows: torch.Tensor
    action_ids: torch.Tensor
    agent_ids: torch.Tensor
    options: torch.Tensor
    term_labels: torch.Tensor
    has_options: bool
    rewards: torch.Tensor
    returns_to_go: torch.Tensor
    has_rewards: bool
    visibility: torch.Tensor
    task_type: str


class EpisodeDataset(Dataset):
    """Windows of embedded episodes, ready for ``collate_episodes``.

    Args:
        episodes: validated episodes.
        encoder: anything with ``encode(texts, progress=...)`` and ``dim`` (a TextEncoder,
            a CachedEncoder).
        max_seq_len: steps per window; longer episodes are cut into several windows.
        window_stride: steps between window starts (default ``max_seq_len``: no overlap;
            smaller values overlap, and ``target_mask`` marks each step in one window only).
        gamma: discount for returns-to-go.
        agent_vocab, option_vocab, action_vocab: vocabularies to reuse (a checkpoint's, the
            training set's). They are copied and labels new to these episodes appended, so
            existing ids keep their meaning.

    Agents named by integers keep their integer as id. An episode without ``agent_ids`` acts
    as agent 0, unless the data set names its agents (some episode, or the given agent
    vocabulary, has names): then it acts as the default agent ``"assistant"`` of its own (the
    agent the chat readers give unnamed assistant messages), never as the first named one.
    All episodes together may name at most ``MAX_AGENTS`` (64) agents.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        encoder: Any,
        *,
        max_seq_len: int,
        window_stride: int | None = None,
        gamma: float = 0.99,
        agent_vocab: Vocabulary | None = None,
        option_vocab: Vocabulary | None = None,
        action_vocab: Vocabulary | None = None,
        progress: bool = True,
    ) -> None:
        episodes = list(episodes)
        if not episodes:
            raise ValueError("EpisodeDataset needs at least one episode")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        stride = max_seq_len if window_stride is None else window_stride
        if not 1 <= stride <= max_seq_len:
            raise ValueError(f"window_stride must be in [1, max_seq_len={max_seq_len}], got {stride}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.episodes = episodes
        self.max_seq_len = max_seq_len
        self.window_stride = stride
        self.gamma = gamma
        self.agent_vocab = _agent_vocabulary(episodes, agent_vocab)
        self.option_vocab = _extend(option_vocab, (o for e in episodes for o in e.options or ()))
        self.action_vocab = _extend(action_vocab, (a for e in episodes for a in e.actions))

        self.texts = list(dict.fromkeys(
            [s for e in episodes for s in e.states] + self.action_vocab.labels
        ))
        self.text_embeddings = _embed(encoder, self.texts, progress)
        row_of = {text: i for i, text in enumerate(self.texts)}
        self.state_dim = self.action_dim = self.text_embeddings.shape[1]
        self.action_bank = self.text_embeddings[[row_of[a] for a in self.action_vocab]]
        self._encoded = [self._encode(e, row_of) for e in episodes]
        self.windows = [
            (i, start, min(start + max_seq_len, len(e)))
            for i, e in enumerate(episodes)
            for start in window_starts(len(e), max_seq_len, stride)
        ]

    @property
    def num_agents(self) -> int:
        return max(len(self.agent_vocab), 1)

    @property
    def num_options(self) -> int:
        return len(self.option_vocab)

    @property
    def num_actions(self) -> int:
        return len(self.action_vocab)

    @property
    def task_types(self) -> list[str]:
        return sorted({e.task_type for e in self.episodes})

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode_index, start, end = self.windows[index]
        enc = self._encoded[episode_index]
        steps = slice(start, end)
        # A step belongs to the first window that holds it, so overlapping windows
        # never count a target twice.
        previous_end = self.windows[index - 1][2] if index and self.windows[index - 1][0] == episode_index else start
        target_mask = torch.arange(start, end) >= previous_end
        return {
            "states": self.text_embeddings[enc.state_rows[steps]],
            "actions": self.text_embeddings[enc.action_rows[steps]],
            "action_ids": enc.action_ids[steps],
            "agent_ids": enc.agent_ids[steps],
            "options": enc.options[steps],
            "term_labels": enc.term_labels[steps],
            "has_options": enc.has_options,
            "rewards": enc.rewards[steps],
            "returns_to_go": enc.returns_to_go[steps],
            "has_rewards": enc.has_rewards,
            "target_mask": target_mask,
            "timesteps": torch.arange(start, end),
            "agent_visibility": enc.visibility,
            "task_type": enc.task_type,
            "episode_index": episode_index,
            "window_start": start,
        }

    def _encode(self, episode: Episode, row_of: Mapping[str, int]) -> _EncodedEpisode:
        length = len(episode)
        labels = episode_agent_labels(episode, self.agent_vocab.labels)
        agent_ids = [0] * length if labels is None else [self.agent_vocab.index(a) for a in labels]
        options = [0] * length if episode.options is None else [self.option_vocab.index(o) for o in episode.options]
        rewards = [0.0] * length if episode.rewards is None else episode.rewards
        option_ids = torch.tensor(options, dtype=torch.long)
        return _EncodedEpisode(
            state_rows=torch.tensor([row_of[s] for s in episode.states]),
            action_rows=torch.tensor([row_of[a] for a in episode.actions]),
            action_ids=torch.tensor([self.action_vocab.index(a) for a in episode.actions]),
            agent_ids=torch.tensor(agent_ids, dtype=torch.long),
            options=option_ids,
            term_labels=termination_targets(option_ids),
            has_options=episode.options is not None,
            rewards=torch.tensor(rewards, dtype=torch.float32),
            returns_to_go=episode_returns_to_go(episode, self.gamma),
            has_rewards=episode.rewards is not None,
            visibility=visibility_matrix(episode, self.agent_vocab, self.num_agents),
            task_type=episode.task_type,
        )


def visibility_matrix(episode: Episode, agent_vocab: Vocabulary, num_agents: int) -> torch.Tensor:
    """bool [A, A] from the episode's ``metadata["visibility"]`` map ({agent: [agents it
    sees]}; row = the viewer): agents not listed see everyone, every agent sees itself, and
    agents the vocabulary does not know are passed over (``agentfast.visibility``)."""
    return visibility_from_map(episode.metadata.get(METADATA_KEY), agent_vocab.labels, num_agents)


def collate_episodes(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pad windows to the longest in the batch; see the module docstring for the fields.

    An item without ``term_labels`` (built by hand rather than by ``EpisodeDataset``) is
    taken to be a whole episode, and its labels are computed from its own options.
    """
    if not items:
        raise ValueError("collate_episodes needs at least one item")
    lengths = [item["states"].shape[0] for item in items]
    batch_size, longest = len(items), max(lengths)

    def padded(key: str, fill: float | int | bool, dtype: torch.dtype) -> torch.Tensor:
        first = items[0][key]
        out = torch.full((batch_size, longest, *first.shape[1:]), fill, dtype=dtype)
        for b, item in enumerate(items):
            out[b, : lengths[b]] = item[key]
        return out

    seq_lens = torch.tensor(lengths, dtype=torch.long)
    return {
        "states": padded("states", 0.0, torch.float32),
        "actions": padded("actions", 0.0, torch.float32),
        "action_ids": padded("action_ids", IGNORE_INDEX, torch.long),
        "seq_lens": seq_lens,
        "valid_mask": torch.arange(longest)[None, :] < seq_lens[:, None],
        "agent_ids": padded("agent_ids", 0, torch.long),
        "options": padded("options", 0, torch.long),
        "term_labels": _padded_term_labels(items, longest),
        "has_options": torch.tensor([bool(i["has_options"]) for i in items]),
        "rewards": padded("rewards", 0.0, torch.float32),
        "returns_to_go": padded("returns_to_go", 0.0, torch.float32),
        "has_rewards": torch.tensor([bool(i["has_rewards"]) for i in items]),
        "target_mask": padded("target_mask", False, torch.bool),
        "timesteps": padded("timesteps", 0, torch.long),
        "agent_mask": torch.stack([i["agent_visibility"] for i in items]),
        "task_types": [i["task_type"] for i in items],
        "episode_index": torch.tensor([i["episode_index"] for i in items], dtype=torch.long),
        "window_start": torch.tensor([i["window_start"] for i in items], dtype=torch.long),
    }


def _padded_term_labels(items: Sequence[Mapping[str, Any]], longest: int) -> torch.Tensor:
    """float32 [B, longest] termination labels of the items, 0.0 at padding."""
    out = torch.zeros(len(items), longest, dtype=torch.float32)
    for b, item in enumerate(items):
        labels = item.get("term_labels")
        labels = termination_targets(item["options"]) if labels is None else labels
        out[b, : len(labels)] = labels
    return out


def split_by_task_type(
    episodes: Sequence[Episode], held_out: Sequence[str]
) -> tuple[list[Episode], list[Episode]]:
    """(episodes of other task types, episodes of the ``held_out`` types), order kept."""
    held = {str(t) for t in held_out}
    present = {e.task_type for e in episodes}
    missing = sorted(held - present)
    if missing:
        raise ValueError(f"held-out task types {missing} do not occur; present: {sorted(present)}")
    train = [e for e in episodes if e.task_type not in held]
    test = [e for e in episodes if e.task_type in held]
    if not train:
        raise ValueError("holding out these task types leaves no training episodes")
    return train, test


def train_val_split(
    episodes: Sequence[Episode], val_fraction: float, seed: int = 0
) -> tuple[list[Episode], list[Episode]]:
    """A random (train, val) split of whole episodes, the same for the same seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(episodes)))
    random.Random(seed).shuffle(order)
    size = round(len(episodes) * val_fraction)
    if val_fraction > 0 and len(episodes) > 1:
        size = min(max(size, 1), len(episodes) - 1)
    val_ids = set(order[:size])
    train = [e for i, e in enumerate(episodes) if i not in val_ids]
    val = [e for i, e in enumerate(episodes) if i in val_ids]
    return train, val


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with ``collate_episodes`` whose shuffling depends only on ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_episodes,
        generator=generator,
        drop_last=drop_last,
    )


def _extend(vocab: Vocabulary | None, labels: Iterable[str]) -> Vocabulary:
    result = Vocabulary() if vocab is None else vocab.copy()
    for label in labels:
        result.add(label)
    return result


def unnamed_agent_label(agent_labels: Iterable[str]) -> str:
    """The agent an episode without ``agent_ids`` acts as among ``agent_labels`` (a data
    set's agent vocabulary): the default agent ``"assistant"`` where agents have names, so
    it never aliases a named one; agent ``"0"`` where agents are numbered or absent."""
    return DEFAULT_AGENT if any(not str(label).isdigit() for label in agent_labels) else "0"


def episode_agent_labels(episode: Episode, agent_labels: Sequence[str]) -> list[str] | None:
    """The agent of each step of ``episode`` as a label of ``agent_labels`` (a data set's or a
    policy's agent vocabulary): its own labels, else the unnamed agent's where the
    vocabulary holds it (``unnamed_agent_label``), else None (agent 0)."""
    labels = episode.agent_labels()
    if labels is not None:
        return labels
    unnamed = unnamed_agent_label(agent_labels)
    return [unnamed] * len(episode) if unnamed in agent_labels else None


def _agent_vocabulary(episodes: Sequence[Episode], given: Vocabulary | None) -> Vocabulary:
    """Integer agents keep their number as id ("0".."max" come first); names follow, and the
    default agent of unnamed episodes last when agents have names (``unnamed_agent_label``).

    More than ``MAX_AGENTS`` agents is an error naming the episode that brings the first
    one too many (checked before the "0".."max" range is built, so a huge id costs nothing).
    """
    result = Vocabulary() if given is None else given.copy()
    numbered = [i for e in episodes if e.agent_ids is not None and e.agent_names is None for i in e.agent_ids]
    if max(numbered, default=0) >= MAX_AGENTS:
        index = next(i for i, e in enumerate(episodes) if e.agent_names is None
                     and max(e.agent_ids or [0]) >= MAX_AGENTS)
        raise ValueError(f"{_describe(episodes[index], index)} has agent id "
                         f"{max(episodes[index].agent_ids)}; agent ids must lie in [0, {MAX_AGENTS})")
    named = any(e.agent_names for e in episodes) or unnamed_agent_label(result) == DEFAULT_AGENT
    if numbered or (not named and all(e.agent_ids is None for e in episodes)):
        for i in range(max(numbered, default=0) + 1):
            result.add(str(i))
    for episode in episodes:
        for label in episode.agent_labels() or ():
            result.add(label)
    if named and any(e.agent_ids is None for e in episodes):
        result.add(DEFAULT_AGENT)
    if len(result) > MAX_AGENTS:
        extra = result.label(MAX_AGENTS)
        index = next((i for i, e in enumerate(episodes)
                      if extra in (episode_agent_labels(e, result.labels) or ())), None)
        where = "the given agent vocabulary" if index is None else _describe(episodes[index], index)
        raise ValueError(f"the data set names {len(result)} distinct agents, more than the "
                         f"{MAX_AGENTS} supported; {where} brings agent {extra!r}, the "
                         f"{MAX_AGENTS + 1}th")
    return result


def _describe(episode: Episode, index: int) -> str:
    """``episode 3 (logs.jsonl:4)``: its position, and its source when the reader kept one."""
    source = episode.metadata.get("source")
    return f"episode {index}" + (f" ({source})" if source is not None else "")


def _embed(encoder: Any, texts: list[str], progress: bool) -> torch.Tensor:
    embeddings = encoder.encode(texts, progress=progress)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
        raise ValueError(f"the encoder returned shape {tuple(embeddings.shape)} for {len(texts)} texts")
    return embeddings.float().cpu()
