"""The episode record: states, actions and optional rewards, agents, options and metadata.

An episode is one dict (the record the user guide's models are trained on)::

    {"states": [...], "actions": [...], "rewards": [...], "agent_ids": [...],
     "options": [...], "metadata": {"task_type": "debugging", ...}}

``Episode.from_dict`` validates one such record and raises ``EpisodeValidationError``
naming the file, line and field of the first problem. Nothing is truncated or coerced
silently: lists of unequal length, wrong types, non-finite rewards, empty episodes and
labels outside a declared set are all errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import FileError
from ..visibility import MAX_AGENTS

EPISODE_KEYS = ("states", "actions", "rewards", "agent_ids", "options", "metadata")
# Metadata keys that declare the allowed labels of an episode (checked when present).
AGENT_NAMES_KEY = "agent_names"
OPTION_NAMES_KEY = "option_names"


class DataError(FileError, ValueError):
    """A problem with input data, located by file, line, column, record and field (each may
    be None); see ``agentfast.errors.FileError``.

    ``record`` names the record inside a file that is not one record per line: ``"record 3"``
    of a JSON array, ``"conversation 3"`` of a ChatGPT export, ``"row 3"`` of a Parquet file
    (0-based, as a JSON path would count).
    """


class EpisodeValidationError(DataError):
    """One record does not satisfy the episode schema."""


def parse_source(source: str | None) -> tuple[str | None, int | None]:
    """Split ``"<file>:<line>"`` into its parts; a source without a line number keeps line None."""
    if source is None:
        return None, None
    head, sep, tail = source.rpartition(":")
    if sep and tail.isdigit():
        return head, int(tail)
    return source, None


@dataclass
class Episode:
    """One logged interaction: step t pairs the observation ``states[t]`` with ``actions[t]``.

    ``agent_ids`` are integers in ``[0, MAX_AGENTS)`` (64: the attention kernels keep agent
    visibility in 64-bit masks); when the raw log named its agents (``"planner"``,
    ``"coder"``), ``agent_names[i]`` is the name of local id ``i`` so nothing is lost.
    """

    states: list[str]
    actions: list[str]
    rewards: list[float] | None = None
    agent_ids: list[int] | None = None
    options: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    agent_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.states)

    @property
    def task_type(self) -> str:
        """``metadata["task_type"]`` as a string, ``"unknown"`` when absent."""
        value = self.metadata.get("task_type")
        return "unknown" if value is None else str(value)

    def agent_labels(self) -> list[str] | None:
        """The agent of each step as a label: its name when named, else the id as text."""
        if self.agent_ids is None:
            return None
        if self.agent_names is None:
            return [str(i) for i in self.agent_ids]
        return [self.agent_names[i] for i in self.agent_ids]

    @classmethod
    def from_dict(
        cls,
        record: Any,
        *,
        source: str | None = None,
        known_agents: Iterable[str | int] | None = None,
        known_options: Iterable[str] | None = None,
    ) -> "Episode":
        """Validate ``record`` and build an Episode.

        ``source`` is ``"<file>:<line>"`` and locates errors. ``known_agents`` and
        ``known_options`` restrict the labels allowed; the record's own
        ``metadata["agent_names"]`` / ``metadata["option_names"]`` do the same.
        """
        path, line = parse_source(source)
        return _Validator(path, line).episode(record, known_agents, known_options)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record; agents are written by name when they have names."""
        record: dict[str, Any] = {"states": list(self.states), "actions": list(self.actions)}
        if self.rewards is not None:
            record["rewards"] = list(self.rewards)
        if self.agent_ids is not None:
            record["agent_ids"] = (
                list(self.agent_ids) if self.agent_names is None else self.agent_labels()
            )
        if self.options is not None:
            record["options"] = list(self.options)
        record["metadata"] = dict(self.metadata)
        return record


class _Validator:
    """Checks one record field by field; every error carries the record's location."""

    def __init__(self, path: str | None, line: int | None) -> None:
        self.path = path
        self.line = line

    def fail(self, field_name: str | None, message: str) -> EpisodeValidationError:
        return EpisodeValidationError(message, path=self.path, line=self.line, field=field_name)

    def episode(
        self,
        record: Any,
        known_agents: Iterable[str | int] | None,
        known_options: Iterable[str] | None,
    ) -> Episode:
        if not isinstance(record, Mapping):
            raise self.fail(None, f"an episode must be a JSON object, got {type_name(record)}")
        unknown = sorted(set(record) - set(EPISODE_KEYS))
        if unknown:
            raise self.fail(unknown[0], f"unknown key; allowed keys are {', '.join(EPISODE_KEYS)}")
        for required in ("states", "actions"):
            if required not in record:
                raise self.fail(required, "missing (states and actions are required)")
        states = self.text_list(record["states"], "states")
        actions = self.text_list(record["actions"], "actions")
        if not states:
            raise self.fail("states", "empty episode: an episode needs at least one step")
        self.same_length("actions", actions, len(states))
        metadata = self.metadata(record.get("metadata"))
        rewards = self.rewards(record.get("rewards"), len(states))
        agent_ids, agent_names = self.agents(
            record.get("agent_ids"), len(states), metadata, known_agents
        )
        options = self.options(record.get("options"), len(states), metadata, known_options)
        return Episode(states, actions, rewards, agent_ids, options, metadata, agent_names)

    def same_length(self, name: str, values: Sequence[Any], expected: int) -> None:
        if len(values) != expected:
            raise self.fail(
                name, f"has {len(values)} entries but states has {expected}; every list "
                "must have one entry per step"
            )

    def text_list(self, value: Any, name: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(name, f"must be a list of strings, got {type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{name}[{i}]", f"must be a string, got {type_name(item)}")
        return list(value)

    def metadata(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail("metadata", f"must be an object, got {type_name(value)}")
        task_type = value.get("task_type")
        if task_type is not None and not isinstance(task_type, str):
            raise self.fail("metadata.task_type", f"must be a string, got {type_name(task_type)}")
        for key in (AGENT_NAMES_KEY, OPTION_NAMES_KEY):
            names = value.get(key)
            if names is not None and (
                not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names)
            ):
                raise self.fail(f"metadata.{key}", "must be a list of labels")
        return dict(value)

    def rewards(self, value: Any, steps: int) -> list[float] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail("rewards", f"must be a list of numbers, got {type_name(value)}")
        self.same_length("rewards", value, steps)
        result = []
        for i, item in enumerate(value):
            # bool is an int subclass in Python, but True as a reward is almost surely a bug.
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise self.fail(f"rewards[{i}]", f"must be a number, got {type_name(item)}")
            result.append(self.finite(item, f"rewards[{i}]"))
        return result

    def finite(self, number: int | float, where: str) -> float:
        """``number`` as a finite float; JSON integers can be too large for any float."""
        try:
            value = float(number)
        except OverflowError:
            raise self.fail(where, "must be finite, got an integer too large for a float "
                                   f"({number.bit_length()} bits; the limit is about 1.8e308)") from None
        if not math.isfinite(value):
            raise self.fail(where, f"must be finite, got {value}")
        return value

    def agents(
        self,
        value: Any,
        steps: int,
        metadata: Mapping[str, Any],
        known: Iterable[str | int] | None,
    ) -> tuple[list[int] | None, list[str] | None]:
        if value is None:
            return None, None
        if not isinstance(value, list):
            raise self.fail("agent_ids", f"must be a list, got {type_name(value)}")
        self.same_length("agent_ids", value, steps)
        allowed = _allowed_labels(known, metadata.get(AGENT_NAMES_KEY))
        names: list[str] = []
        ids: list[int] = []
        kinds = set()
        for i, item in enumerate(value):
            where = f"agent_ids[{i}]"
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise self.fail(where, f"must be an integer or a role name, got {type_name(item)}")
            if isinstance(item, int) and item < 0:
                raise self.fail(where, f"must be >= 0, got {item}")
            if isinstance(item, int) and item >= MAX_AGENTS:
                raise self.fail(where, f"must be < {MAX_AGENTS}, got {item}: agent ids lie in "
                                       f"[0, {MAX_AGENTS}) (at most {MAX_AGENTS} agents are supported)")
            if isinstance(item, str) and not item:
                raise self.fail(where, "must not be an empty name")
            if allowed is not None and str(item) not in allowed:
                raise self.fail(where, f"unknown agent {item!r}; known: {sorted(allowed)}")
            kinds.add(type(item))
            if len(kinds) > 1:
                raise self.fail(where, "mixes integer ids and role names in one episode")
            if isinstance(item, int):
                ids.append(item)
            else:
                if item not in names:
                    names.append(item)
                if len(names) > MAX_AGENTS:
                    raise self.fail(where, f"{item!r} is agent number {len(names)} of the episode; "
                                           f"at most {MAX_AGENTS} distinct agents are supported")
                ids.append(names.index(item))
        return ids, (names if names else None)

    def options(
        self,
        value: Any,
        steps: int,
        metadata: Mapping[str, Any],
        known: Iterable[str] | None,
    ) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail("options", f"must be a list of option labels, got {type_name(value)}")
        self.same_length("options", value, steps)
        allowed = _allowed_labels(known, metadata.get(OPTION_NAMES_KEY))
        result = []
        for i, item in enumerate(value):
            where = f"options[{i}]"
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise self.fail(where, f"must be a string label, got {type_name(item)}")
            label = str(item)
            if not label:
                raise self.fail(where, "must not be empty")
            if allowed is not None and label not in allowed:
                raise self.fail(where, f"unknown option {label!r}; known: {sorted(allowed)}")
            result.append(label)
        return result


def _allowed_labels(known: Iterable[Any] | None, declared: Iterable[Any] | None) -> set[str] | None:
    """Labels allowed by the caller and by the record's metadata (both apply when both given)."""
    sets = [{str(x) for x in s} for s in (known, declared) if s is not None]
    if not sets:
        return None
    return set.intersection(*sets)


def type_name(value: Any) -> str:
    """JSON-flavoured type names make errors readable for people editing JSONL by hand."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
