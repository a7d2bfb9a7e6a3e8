"""OpenAI chat fine-tuning records and OpenAI preference (DPO) records.

Chat: ``{"messages": [...], "tools": [...], "functions": [...], "parallel_tool_calls": ...}``
with roles system/developer/user/assistant/tool/function. Each assistant message is an action
unless it has ``weight: 0`` (then it is context in the next state); its text is its content,
its ``refusal`` and its tool calls (``function`` and ``custom``, or the legacy
``function_call``). Tool results are labelled by the name of the function they answer,
resolved from ``tool_call_id``. ``name`` on assistant messages names agents.

Preference: ``{"input": {"messages": [...], "tools": ...}, "preferred_output": [...],
"non_preferred_output": [...]}``: two episodes that share the input, the preferred one with
the higher reward (see ``chat.preference_pair``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from .chat import (
    Message,
    extra_metadata,
    labelled,
    messages_to_episode,
    need,
    optional_str,
    preference_pair,
    render_tool_call,
)
from .report import Built
from .sources import Location

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
OUTPUT_ROLES = ("assistant", "tool")
TOOL_KEYS = ("tools", "functions", "parallel_tool_calls")
MEDIA_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file"}


class _Conversation:
    """Parses messages in order, remembering tool call ids so results can name their tool."""

    def __init__(self, location: Location, counts: Counter) -> None:
        self.location = location
        self.counts = counts
        self.calls: dict[str, str] = {}  # tool_call_id -> function name

    def message(self, raw: Any, where: str, *, targets: bool = True,
                roles: tuple[str, ...] = CHAT_ROLES) -> Message:
        location = self.location
        need(raw, dict, location, where, "an object (one chat message)")
        role = raw.get("role")
        if role not in roles:
            raise location.error(f"{where}.role", f"must be one of {', '.join(roles)}, got {role!r}")
        name = optional_str(raw, "name", location, where)
        text = self.content(raw.get("content"), f"{where}.content")
        if role == "assistant":
            return self.assistant(raw, where, text, name, targets)
        if role == "tool":
            call_id = need(raw.get("tool_call_id"), str, location, f"{where}.tool_call_id", "a string")
            if call_id not in self.calls:
                raise location.error(f"{where}.tool_call_id",
                                     f"{call_id!r} answers no earlier tool call of this conversation")
            return Message(labelled("tool", self.calls[call_id]), text)
        if role == "function":
            function = need(raw.get("name"), str, location, f"{where}.name", "the function's name")
            return Message(labelled("function", function), text)
        return Message(labelled(role, name), text)

    def assistant(self, raw: Mapping[str, Any], where: str, text: str, name: str | None,
                  targets: bool) -> Message:
        location = self.location
        refusal = optional_str(raw, "refusal", location, where)
        pieces = [text] if text else []
        if refusal:
            pieces.append(refusal)
            self.counts["refusals"] += 1
        pieces.extend(self.tool_calls(raw, where))
        audio = raw.get("audio")
        if audio is not None and not pieces:
            need(audio, dict, location, f"{where}.audio", "an object")
            pieces.append("[audio]")  # an earlier spoken reply: only its id is kept
            self.counts["media_parts"] += 1
        if not pieces:
            raise location.error(where, "assistant message has neither content nor tool calls (nor a refusal)")
        weight = raw.get("weight", 1)
        if weight is None:
            weight = 1
        if isinstance(weight, bool) or weight not in (0, 1):
            raise location.error(f"{where}.weight", f"must be 0 or 1, got {weight!r}")
        action = targets and weight == 1
        if targets and weight == 0:
            self.counts["weight0_messages"] += 1
        elif not targets:
            self.counts["prompt_assistant_messages"] += 1
        message_text = "\n".join(pieces)
        if action:
            return Message("assistant", message_text, action=True, agent=name)
        return Message(labelled("assistant", name), message_text)

    def tool_calls(self, raw: Mapping[str, Any], where: str) -> list[str]:
        location = self.location
        rendered = []
        calls = raw.get("tool_calls")
        if isinstance(calls, str):  # the list JSON-encoded once more, as some exporters do
            raise location.error(f"{where}.tool_calls", "must be a list of tool calls, got a "
                                 "string (the list encoded as JSON text?); write the list itself")
        if calls is not None:
            need(calls, list, location, f"{where}.tool_calls", "a list")
            for j, call in enumerate(calls):
                call_where = f"{where}.tool_calls[{j}]"
                need(call, dict, location, call_where, "an object")
                kind = call.get("type", "function")
                if kind not in ("function", "custom"):
                    raise location.error(f"{call_where}.type", f"must be 'function' or 'custom', got {kind!r}")
                body = need(call.get(kind), dict, location, f"{call_where}.{kind}", "an object")
                function = need(body.get("name"), str, location, f"{call_where}.{kind}.name", "a string")
                argument_key = "arguments" if kind == "function" else "input"
                arguments = body.get(argument_key, "")
                need(arguments, (str, dict, list), location, f"{call_where}.{kind}.{argument_key}", "a string")
                call_id = call.get("id")
                if call_id is not None:
                    self.calls[need(call_id, str, location, f"{call_where}.id", "a string")] = function
                rendered.append(render_tool_call(function, arguments))
        legacy = raw.get("function_call")
        if legacy is not None:
            need(legacy, dict, location, f"{where}.function_call", "an object")
            function = need(legacy.get("name"), str, location, f"{where}.function_call.name", "a string")
            rendered.append(render_tool_call(function, legacy.get("arguments", "")))
        return rendered

    def content(self, value: Any, where: str) -> str:
        """A string, null (tool-call-only turns) or a list of typed parts."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        need(value, list, self.location, where, "a string, a list of parts or null")
        return "\n".join(piece for j, part in enumerate(value)
                         if (piece := self.part(part, f"{where}[{j}]")))

    def part(self, part: Any, where: str) -> str:
        location = self.location
        if isinstance(part, str):
            return part
        need(part, dict, location, where, "a string or a typed object")
        kind = need(part.get("type"), str, location, f"{where}.type", "a string")
        if kind in ("text", "input_text", "output_text"):
            return need(part.get("text"), str, location, f"{where}.text", "a string")
        if kind == "refusal":
            self.counts["refusals"] += 1
            return need(part.get("refusal"), str, location, f"{where}.refusal", "a string")
        if kind in MEDIA_PARTS:
            body = need(part.get(kind), dict, location, f"{where}.{kind}", "an object")
            self.counts["media_parts"] += 1
            filename = optional_str(body, "filename", location, f"{where}.{kind}") if kind == "file" else None
            return f"[{MEDIA_PARTS[kind]}: {filename}]" if filename else f"[{MEDIA_PARTS[kind]}]"
        self.counts["unsupported_content"] += 1
        return f"[{kind}]"


def _tool_metadata(record: Mapping[str, Any], location: Location, where: str) -> dict[str, Any]:
    """Top-level ``tools`` / ``functions`` / ``parallel_tool_calls``, kept in the metadata."""
    kept = {}
    for key in TOOL_KEYS:
        value = record.get(key)
        if value is None:
            continue
        if key == "parallel_tool_calls":
            need(value, bool, location, f"{where}{key}", "true or false")
        else:
            need(value, list, location, f"{where}{key}", "a list")
            for j, item in enumerate(value):
                need(item, dict, location, f"{where}{key}[{j}]", "an object")
        kept[key] = value
    return kept


def _metadata(record: Mapping[str, Any], location: Location, skip: set[str]) -> dict[str, Any]:
    metadata = record.get("metadata")
    if metadata is not None:
        need(metadata, dict, location, "metadata", "an object")
    return {**extra_metadata(record, skip | {"metadata"}), **(metadata or {}), "source": location.source}


def build_chat(record: Any, location: Location, state_context: str) -> Built:
    need(record, dict, location, None, "a JSON object with a 'messages' list")
    messages = need(record.get("messages"), list, location, "messages", "a list of messages")
    counts: Counter = Counter()
    conversation = _Conversation(location, counts)
    parsed = [conversation.message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if not any(m.action for m in parsed) and any(m.label.startswith("assistant") for m in parsed):
        raise location.error("messages", "every assistant message has weight 0: nothing to learn")
    metadata = {**_metadata(record, location, {"messages", *TOOL_KEYS}), **_tool_metadata(record, location, "")}
    episode = messages_to_episode(parsed, metadata, location, counts, state_context=state_context)
    return Built([episode], counts)


def build_preference(record: Any, location: Location, state_context: str) -> Built:
    need(record, dict, location, None, "a JSON object with input, preferred_output and non_preferred_output")
    prompt = need(record.get("input"), dict, location, "input", "an object with a 'messages' list")
    counts: Counter = Counter()
    conversation = _Conversation(location, counts)
    messages = need(prompt.get("messages"), list, location, "input.messages", "a list of messages")
    context = [conversation.message(m, f"input.messages[{i}]", targets=False) for i, m in enumerate(messages)]
    outputs = []
    for key in ("preferred_output", "non_preferred_output"):
        raw = need(record.get(key), list, location, key, "a list of assistant (and tool) messages")
        branch = _Conversation(location, counts)
        branch.calls = dict(conversation.calls)
        outputs.append([branch.message(m, f"{key}[{i}]", roles=OUTPUT_ROLES) for i, m in enumerate(raw)])
        if not any(m.action for m in outputs[-1]):
            raise location.error(key, "needs at least one assistant message with weight 1")
    metadata = {**_metadata(record, location, {"input", "preferred_output", "non_preferred_output"}),
                **_tool_metadata(prompt, location, "input."), "preference_pair": location.place}
    episodes = preference_pair(context, outputs[0], outputs[1], metadata, location, counts, state_context)
    return Built(episodes, counts)
