"""ShareGPT records, as LLaMA-Factory documents them and public agent-trajectory sets ship them.

``{"conversations": [{"from": ..., "value": ...}, ...], "system": ..., "tools": ...}``, one per
JSONL line, as one JSON array, or as Parquet rows. Roles: ``human`` (user), ``gpt``
(assistant), ``function_call`` (an assistant tool call, its value JSON ``{"name",
"arguments"}``), ``observation`` (the tool's result) and ``system``; ``gpt`` and
``function_call`` turns are actions, ``human`` and ``observation`` turns feed the next state,
system prompts (a first ``system`` turn or the top-level ``system``) are kept in the state.
Messages written with OpenAI's tags (``role``/``content``, user/assistant/tool) read the same.
Top-level ``tools`` go to the episode's metadata. A record with ``chosen`` and ``rejected``
turns (LLaMA-Factory's preference format) becomes a preferred and a non-preferred episode.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Mapping

from .chat import Message, extra_metadata, labelled, messages_to_episode, need, preference_pair, render_tool_call
from .report import Built
from .sources import Location

ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "model": "assistant",
    "function_call": "function_call",
    "observation": "observation", "tool": "observation", "function_response": "observation",
    "system": "system",
}
RECORD_KEYS = {"conversations", "system", "tools", "chosen", "rejected", "images", "videos", "audios"}
MEDIA_KEYS = ("images", "videos", "audios")


class _Turns:
    """Reads turns in order; tool results are labelled by the function of the last call."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.last_calls: list[str] = []

    def turn(self, raw: Any, where: str) -> Message:
        location = self.location
        need(raw, dict, location, where, "an object with 'from' and 'value'")
        role_key, text_key = ("from", "value") if "from" in raw or "value" in raw else ("role", "content")
        tag = raw.get(role_key)
        if not isinstance(tag, str) or tag not in ROLES:
            raise location.error(f"{where}.{role_key}", f"must be one of {', '.join(ROLES)}, got {tag!r}")
        text = need(raw.get(text_key), str, location, f"{where}.{text_key}", "a string")
        role = ROLES[tag]
        if role == "assistant":
            return Message("assistant", text, action=True)
        if role == "function_call":
            names, rendered = _calls(text)
            self.last_calls = names
            return Message("assistant", rendered, action=True)
        if role == "observation":
            return Message(labelled("tool", ", ".join(self.last_calls)), text)
        return Message(role, text)


def _calls(value: str) -> tuple[list[str], str]:
    """Function names and the rendered calls of a ``function_call`` value: a JSON call
    ``{"name", "arguments"}``, a list of them, or (not JSON) the text itself."""
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if calls and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return ([c["name"] for c in calls],
                "\n".join(render_tool_call(c["name"], c.get("arguments", "")) for c in calls))
    return [], f"[tool call] {value}"


def _tools(value: Any, location: Location) -> Any:
    """Top-level ``tools``: a JSON string (LLaMA-Factory) or a list; kept parsed when it parses."""
    need(value, (str, list, dict), location, "tools", "a JSON string or a list of tools")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def build_sharegpt(record: Any, location: Location, state_context: str) -> Built:
    need(record, dict, location, None, "a JSON object with a 'conversations' list")
    turns_raw = need(record.get("conversations"), list, location, "conversations", "a list of turns")
    counts: Counter = Counter()
    reader = _Turns(location)
    turns = [reader.turn(t, f"conversations[{i}]") for i, t in enumerate(turns_raw)]
    system = record.get("system")
    if system is not None and need(system, str, location, "system", "a string"):
        turns.insert(0, Message("system", system))
    metadata: dict[str, Any] = {**extra_metadata(record, RECORD_KEYS), "source": location.source}
    if record.get("tools") not in (None, "", []):
        metadata["tools"] = _tools(record["tools"], location)
    for key in MEDIA_KEYS:
        media = record.get(key)
        if media:
            need(media, list, location, key, "a list of file paths")
            metadata[key] = media
            counts["media_parts"] += len(media)  # their <image>-style tags stay in the text
    if record.get("chosen") is not None or record.get("rejected") is not None:
        outputs = []
        for key in ("chosen", "rejected"):
            branch = _Turns(location)
            branch.last_calls = reader.last_calls
            message = branch.turn(record.get(key), key)
            if not message.action:
                raise location.error(key, "must be a gpt or function_call turn")
            outputs.append([message])
        episodes = preference_pair(_as_context(turns, counts), outputs[0], outputs[1],
                                   {**metadata, "preference_pair": location.place},
                                   location, counts, state_context)
        return Built(episodes, counts)
    episode = messages_to_episode(turns, metadata, location, counts, state_context=state_context)
    return Built([episode], counts)


def _as_context(turns: list[Message], counts: Counter) -> list[Message]:
    """A preference prompt: its assistant turns are context, not the compared actions."""
    result = []
    for message in turns:
        if message.action:
            counts["prompt_assistant_messages"] += 1
            message = Message("assistant", message.text)
        result.append(message)
    return result


def is_sharegpt(record: Mapping[str, Any]) -> bool:
    turns = record.get("conversations")
    return isinstance(turns, list) and (not turns or isinstance(turns[0], dict)
                                        and ("from" in turns[0] or "role" in turns[0]))
