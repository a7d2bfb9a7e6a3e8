"""ChatGPT's data export, ``conversations.json``, as exported today.

Each conversation's ``mapping`` is a tree of messages; the branch the user last saw runs from
``current_node`` back to the root (edits and regenerations are the other branches). Along it:

* the visible user, assistant and tool messages make the steps: an assistant message
  addressed to a tool (``recipient`` other than "all") is a tool call, a ``tool`` message its
  result;
* context the assistant saw stays in the state as text: custom instructions
  (``user_editable_context``: user_profile / user_instructions, or the older
  ``user_context_message_data``) and memory (``model_editable_context``);
* messages the UI hides (``metadata.is_visually_hidden_from_conversation``) and internal
  reasoning (``thoughts``, ``reasoning_recap``, the ``analysis`` channel) are left out, so a
  request pairs with the visible reply;
* browsing results keep their ``summary`` when ``result`` is empty, uploads their file names
  (``metadata.attachments``), voice messages their transcript; images, audio and other media
  become a short placeholder.

Everything left out or replaced is counted in the report. A conversation without an
assistant reply is skipped and counted; one with ``current_node: null`` is followed along
its only branch (counted), or is an error when it branches.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from .chat import (
    Message,
    NoAction,
    labelled,
    messages_to_episode,
    need,
    optional_object,
    optional_str,
    render_tool_call,
)
from .report import Built
from .sources import Location, looks_like_conversation

ROLES = ("system", "user", "assistant", "tool", "developer")
CONTEXT_TYPES = ("user_editable_context", "model_editable_context")
REASONING_TYPES = ("thoughts", "reasoning_recap")
AUDIO_PARTS = {"audio_asset_pointer": "audio", "real_time_user_audio_video_asset_pointer": "audio",
               "video_container_asset_pointer": "video"}
CONVERSATION_KEYS = ("title", "conversation_id", "id", "create_time", "update_time",
                     "default_model_slug", "gizmo_id")


def conversations_of(record: Any) -> list[Any] | None:
    """The conversations of a ``{"conversations": [...]}`` wrapper read as one record (a
    one-line JSONL file, a Parquet row), else None."""
    if isinstance(record, dict) and "mapping" not in record and isinstance(record.get("conversations"), list):
        items = record["conversations"]
        if items and all(looks_like_conversation(item) for item in items):
            return items
    return None


def build_conversation(conversation: Any, location: Location, state_context: str) -> Built:
    location = location.named("conversation")
    need(conversation, dict, location, None, "an object (one conversation)")
    counts: Counter = Counter()
    messages: list[Message] = []
    for node_id in _branch(conversation, location, counts):
        message = _message(conversation["mapping"][node_id].get("message"), f"mapping.{node_id}.message",
                           location, counts)
        if message is not None:
            messages.append(message)
    metadata = {key: conversation[key] for key in CONVERSATION_KEYS if conversation.get(key) is not None}
    metadata["source"] = location.source
    try:
        episode = messages_to_episode(messages, metadata, location, counts, state_context=state_context)
    except NoAction:
        counts["conversations_without_reply"] += 1
        return Built([], counts)
    return Built([episode], counts)


# ------------------------------------------------------------------------------ the branch

def _branch(conversation: Mapping[str, Any], location: Location, counts: Counter) -> list[str]:
    """Node ids from the root to ``current_node`` (the branch the user last saw)."""
    mapping = need(conversation.get("mapping"), dict, location, "mapping", "an object of message nodes")
    if not mapping:
        raise location.error("mapping", "empty: the conversation has no messages")
    for node_id, node in mapping.items():
        need(node, dict, location, f"mapping.{node_id}", "an object (one message node)")
        parent = node.get("parent")
        if parent is not None:
            need(parent, str, location, f"mapping.{node_id}.parent", "a node id (string) or null")
    node_id = conversation.get("current_node")
    if node_id is None:
        node_id = _only_leaf(mapping, location)
        counts["current_node_missing"] += 1
    else:
        need(node_id, str, location, "current_node", "a node id (string) or null")
    chain: list[str] = []
    seen = set()
    while node_id is not None:
        if node_id in seen:
            raise location.error(f"mapping.{chain[-1]}.parent", f"the parent links form a cycle "
                                 f"(back to {node_id!r})")
        if node_id not in mapping:
            field = "current_node" if not chain else f"mapping.{chain[-1]}.parent"
            raise location.error(field, f"points to unknown node {node_id!r}")
        seen.add(node_id)
        chain.append(node_id)
        node_id = mapping[node_id].get("parent")
    chain.reverse()
    return chain


def _only_leaf(mapping: Mapping[str, Any], location: Location) -> str:
    """The leaf of a conversation with a single branch; an error when there are several."""
    parents = {node.get("parent") for node in mapping.values()}
    leaves = [node_id for node_id in mapping if node_id not in parents]
    if len(leaves) != 1:
        raise location.error("current_node", f"null, and the conversation has {len(leaves)} branches: "
                             "cannot tell which one the user saw")
    return leaves[0]


# ------------------------------------------------------------------------------ messages

def _message(raw: Any, where: str, location: Location, counts: Counter) -> Message | None:
    """The message of one node as it reads in a state or as an action; None when it is left
    out (counted)."""
    if raw is None:
        return None  # the root and other structural nodes carry no message
    need(raw, dict, location, where, "an object or null")
    author = need(raw.get("author"), dict, location, f"{where}.author", "an object")
    role = author.get("role")
    if role not in ROLES:
        raise location.error(f"{where}.author.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    name = optional_str(author, "name", location, f"{where}.author")
    content = need(raw.get("content"), dict, location, f"{where}.content", "an object")
    kind = need(content.get("content_type"), str, location, f"{where}.content.content_type", "a string")
    metadata = optional_object(raw, "metadata", location, where)
    recipient = optional_str(raw, "recipient", location, where)
    channel = optional_str(raw, "channel", location, where)

    context = _context_text(content, kind, metadata, location, where)
    if context is not None:
        label, text = context
        if not text.strip():
            counts["empty_messages"] += 1
            return None
        counts["context_messages"] += 1
        return Message(label, text)
    if kind in REASONING_TYPES or channel == "analysis":
        counts["reasoning_messages"] += 1
        return None
    if need(metadata.get("is_visually_hidden_from_conversation", False), (bool, type(None)), location,
            f"{where}.metadata.is_visually_hidden_from_conversation", "true or false"):
        counts["hidden_messages"] += 1
        return None

    text = _Content(location, f"{where}.content", counts, metadata).text(content, kind)
    text = "\n".join(p for p in [text, _attachment_lines(metadata, location, where, counts, text)] if p)
    if not text.strip():
        counts["empty_messages"] += 1
        return None
    if role == "assistant":
        if recipient is not None and recipient != "all":
            return Message("assistant", render_tool_call(recipient, text), action=True)
        return Message("assistant", text, action=True)
    return Message(labelled(role, name), text)


def _context_text(content: Mapping[str, Any], kind: str, metadata: Mapping[str, Any],
                  location: Location, where: str) -> tuple[str, str] | None:
    """(label, text) of custom instructions or memory, else None."""
    if kind == "user_editable_context":
        pieces = [optional_str(content, key, location, f"{where}.content")
                  for key in ("user_profile", "user_instructions")]
        return "custom instructions", "\n".join(p for p in pieces if p)
    if kind == "model_editable_context":
        pieces = [optional_str(content, key, location, f"{where}.content")
                  for key in ("model_set_context", "repo_summary")]
        return "memory", "\n".join(p for p in pieces if p)
    legacy = metadata.get("user_context_message_data")
    if legacy is not None:  # custom instructions before user_editable_context existed
        need(legacy, dict, location, f"{where}.metadata.user_context_message_data", "an object")
        pieces = [optional_str(legacy, key, location, f"{where}.metadata.user_context_message_data")
                  for key in ("about_user_message", "about_model_message")]
        return "custom instructions", "\n".join(p for p in pieces if p)
    return None


def _attachment_lines(metadata: Mapping[str, Any], location: Location, where: str,
                      counts: Counter, text: str) -> str:
    """``[attached file: name]`` for each upload not already shown as an image part."""
    attachments = metadata.get("attachments")
    if attachments is None:
        return ""
    need(attachments, list, location, f"{where}.metadata.attachments", "a list")
    lines = []
    for j, attachment in enumerate(attachments):
        need(attachment, dict, location, f"{where}.metadata.attachments[{j}]", "an object")
        name = optional_str(attachment, "name", location, f"{where}.metadata.attachments[{j}]")
        name = name or optional_str(attachment, "id", location, f"{where}.metadata.attachments[{j}]")
        if name and f"[image: {name}]" not in text:
            lines.append(f"[attached file: {name}]")
            counts["attachments"] += 1
    return "\n".join(lines)


class _Content:
    """Text of a message's ``content`` by ``content_type``; wrong types are field errors."""

    def __init__(self, location: Location, where: str, counts: Counter, metadata: Mapping[str, Any]) -> None:
        self.location = location
        self.where = where
        self.counts = counts
        self.attachment_names = _attachment_names(metadata)

    def field(self, content: Mapping[str, Any], key: str) -> str:
        return optional_str(content, key, self.location, self.where) or ""

    def text(self, content: Mapping[str, Any], kind: str) -> str:
        if kind in ("text", "multimodal_text") or (content.get("parts") is not None and kind not in _FIELDS):
            return self.parts(content)
        if kind in _FIELDS:
            return _FIELDS[kind](self, content)
        for key in ("text", "result", "content"):  # an unknown type: its text, where it has one
            if isinstance(content.get(key), str) and content[key]:
                return content[key]
        self.counts["unsupported_content"] += 1
        return f"[{kind}]"

    def parts(self, content: Mapping[str, Any]) -> str:
        parts = need(content.get("parts"), list, self.location, f"{self.where}.parts", "a list")
        voice = any(isinstance(p, dict) and p.get("content_type") == "audio_transcription" for p in parts)
        pieces = [self.part(part, f"{self.where}.parts[{j}]", voice) for j, part in enumerate(parts)]
        return "\n".join(p for p in pieces if p)

    def part(self, part: Any, where: str, voice: bool) -> str:
        if isinstance(part, str):
            return part
        need(part, dict, self.location, where, "a string or an object")
        kind = part.get("content_type")
        if kind == "audio_transcription":
            return need(part.get("text"), str, self.location, f"{where}.text", "a string")
        if kind in AUDIO_PARTS:
            if voice:  # the transcript in the same message says it in text
                self.counts["voice_audio_parts"] += 1
                return ""
            self.counts["media_parts"] += 1
            return f"[{AUDIO_PARTS[kind]}]"
        if kind == "image_asset_pointer":
            self.counts["media_parts"] += 1
            pointer = optional_str(part, "asset_pointer", self.location, where) or ""
            name = self.attachment_names.get(pointer.rsplit("://", 1)[-1])
            return f"[image: {name}]" if name else "[image]"
        text = part.get("text")
        if text is not None:
            return need(text, str, self.location, f"{where}.text", "a string")
        if kind is None:
            raise self.location.error(where, "a part object needs a content_type or a text")
        need(kind, str, self.location, f"{where}.content_type", "a string")
        self.counts["unsupported_content"] += 1
        return f"[{kind}]"


def _attachment_names(metadata: Mapping[str, Any]) -> dict[str, str]:
    """File id -> name of the message's uploads (types are checked by ``_attachment_lines``)."""
    names = {}
    attachments = metadata.get("attachments")
    if isinstance(attachments, list):
        for attachment in attachments:
            if isinstance(attachment, dict) and isinstance(attachment.get("id"), str) \
                    and isinstance(attachment.get("name"), str):
                names[attachment["id"]] = attachment["name"]
    return names


def _browsing(reader: _Content, content: Mapping[str, Any]) -> str:
    return reader.field(content, "result") or reader.field(content, "summary")


def _quote(reader: _Content, content: Mapping[str, Any]) -> str:
    title, url, text = (reader.field(content, key) for key in ("title", "url", "text"))
    head = " - ".join(p for p in (title, url) if p)
    return "\n".join(p for p in (head, text or reader.field(content, "snippet")) if p)


def _error(reader: _Content, content: Mapping[str, Any]) -> str:
    name, text = reader.field(content, "name"), reader.field(content, "text")
    return f"error ({name}): {text}" if name else f"error: {text}"


def _computer(reader: _Content, content: Mapping[str, Any]) -> str:
    state = optional_object(content, "state", reader.location, reader.where)
    where = " - ".join(p for p in (optional_str(state, key, reader.location, f"{reader.where}.state")
                                   for key in ("title", "url")) if p)
    if content.get("screenshot") is not None:
        reader.counts["media_parts"] += 1
        return "\n".join(p for p in ("[screenshot]", where) if p)
    return where


_FIELDS = {
    "code": lambda reader, content: reader.field(content, "text"),
    "execution_output": lambda reader, content: reader.field(content, "text"),
    "citable_code_output": lambda reader, content: reader.field(content, "output_str"),
    "tether_browsing_display": _browsing,
    "tether_quote": _quote,
    "sonic_webpage": _quote,
    "system_error": _error,
    "computer_output": _computer,
}
