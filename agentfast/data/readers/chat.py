"""Chat messages to episodes, shared by the OpenAI, ChatGPT-export and ShareGPT readers.

An action is what the assistant visibly did (its text, refusal or tool calls); the state of
that step is what it saw since its previous action. Assistant messages that are not training
targets (``weight: 0``, preference prompts) are context: they go into the next state.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..schema import DataError, Episode, type_name
from .report import DEFAULT_AGENT
from .sources import Location

NO_NEW_INPUT = "(no new input)"  # state of an assistant turn that directly follows another
STATE_CONTEXTS = ("new", "full")


@dataclass
class Message:
    """One chat message, normalised. ``label`` is how the message reads in a state ("user",
    "tool (run_tests)", "custom instructions"); ``action`` marks assistant training targets."""

    label: str
    text: str
    action: bool = False
    agent: str | None = None  # the assistant's name, for actions


class NoAction(DataError):
    """A conversation without any assistant action to learn."""


def render_tool_call(name: str, arguments: Any) -> str:
    """Tool calls become part of the action text, so a policy can learn to emit them."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    return f"[tool call] {name}({arguments})"


def labelled(role: str, name: str | None) -> str:
    return role if not name else f"{role} ({name})"


def check_state_context(state_context: str) -> None:
    if state_context not in STATE_CONTEXTS:
        raise ValueError(f"state_context must be 'new' or 'full', got {state_context!r}")


def messages_to_episode(
    messages: Sequence[Message],
    metadata: dict[str, Any],
    location: Location,
    counts: Counter,
    *,
    state_context: str = "new",
    rewards: Sequence[float] | None = None,
) -> Episode:
    """One step per action; its state is the context before it.

    ``state_context="new"`` keeps only the messages since the previous action (the sequence
    model sees earlier steps itself, and long histories would otherwise be cut by the
    encoder's length limit); ``"full"`` keeps the whole conversation so far. Messages after
    the last action pair with no action: they are counted as ``unanswered_messages``.
    ``rewards``: given per step, or None.
    """
    states: list[str] = []
    actions: list[str] = []
    agents: list[str | None] = []
    pending: list[Message] = []
    history: list[Message] = []
    for message in messages:
        if not message.action:
            pending.append(message)
            history.append(message)
            continue
        context = history if state_context == "full" else pending
        states.append("\n".join(f"{m.label}: {m.text}" for m in context) or NO_NEW_INPUT)
        actions.append(message.text)
        agents.append(message.agent)
        history.append(Message(labelled("assistant", message.agent), message.text))
        pending = []
    if not actions:
        raise NoAction("the conversation has no assistant message to learn as an action",
                       path=location.path, line=location.line, field="messages", record=location.record)
    counts["unanswered_messages"] += len(pending)
    record: dict[str, Any] = {"states": states, "actions": actions, "metadata": metadata}
    if any(agents):
        record["agent_ids"] = [agent or DEFAULT_AGENT for agent in agents]
    if rewards is not None:
        record["rewards"] = list(rewards)
    try:
        return Episode.from_dict(record, source=None)
    except DataError as error:  # locate errors of the derived record at the input record
        raise location.error(error.field, error.reason) from None


def preference_rewards(steps: int, preferred: bool) -> list[float]:
    """+1 (preferred) or -1 (non-preferred) on the last step, 0 before: the preferred episode
    has the higher return at every step, and both differ from unrewarded (0) episodes."""
    return [0.0] * (steps - 1) + [1.0 if preferred else -1.0]


def preference_pair(
    prompt: Sequence[Message],
    preferred: Sequence[Message],
    non_preferred: Sequence[Message],
    metadata: dict[str, Any],
    location: Location,
    counts: Counter,
    state_context: str,
) -> list[Episode]:
    """Two episodes sharing ``prompt``: the preferred continuation and the other one, with
    ordered rewards and ``metadata["preference"]`` saying which is which."""
    episodes = []
    for outputs, is_preferred in ((preferred, True), (non_preferred, False)):
        steps = sum(m.action for m in outputs)
        episodes.append(messages_to_episode(
            [*prompt, *outputs],
            {**metadata, "preference": "preferred" if is_preferred else "non_preferred",
             "success": is_preferred},
            location, counts, state_context=state_context,
            rewards=preference_rewards(steps, is_preferred) if steps else None,
        ))
    counts["preference_pairs"] += 1
    return episodes


def extra_metadata(record: Mapping[str, Any], skip: set[str]) -> dict[str, Any]:
    """Top-level keys of an input record kept as episode metadata (ids, sources, task types)."""
    return {k: v for k, v in record.items() if k not in skip and v is not None}


# ----------------------------------------------------------------------- type checks

def need(value: Any, kind: type | tuple[type, ...], location: Location, where: str, what: str) -> Any:
    """``value`` if it is a ``kind``, else a field error saying what it must be."""
    if value.__class__ is not bool and isinstance(value, kind):
        return value
    if value is None and type(None) not in _as_tuple(kind):
        raise location.error(where, f"missing; must be {what}")
    if not isinstance(value, kind) or bool not in _as_tuple(kind):  # True is no number here
        raise location.error(where, f"must be {what}, got {type_name(value)}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def optional_str(mapping: Mapping[str, Any], key: str, location: Location, where: str) -> str | None:
    """``mapping[key]``: a string, or None when absent or null; anything else is a field error."""
    value = mapping.get(key)
    if value is None:
        return None
    return need(value, str, location, f"{where}.{key}" if where else key, "a string")


def optional_object(mapping: Mapping[str, Any], key: str, location: Location, where: str) -> dict:
    value = mapping.get(key)
    if value is None:
        return {}
    return need(value, dict, location, f"{where}.{key}" if where else key, "an object")
