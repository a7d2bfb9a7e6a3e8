"""Readers that turn agent logs into validated episodes, and a writer for episode JSONL.

Three inputs are understood:

* episode JSONL: one episode record (see ``schema.py``) per line;
* OpenAI chat-format JSONL: ``{"messages": [...]}`` per line, roles system/user/assistant/
  tool; each assistant message is one step, its text plus serialised tool calls the
  action, and the messages since the previous assistant message its state;
* the ChatGPT data export ``conversations.json``: a JSON array of conversations whose
  ``mapping`` is a tree of messages; the shown branch runs from ``current_node`` back to
  the root.

In strict mode (the default) the first bad record raises a ``DataError`` naming file,
line and field. In lenient mode bad records are skipped, collected in
``ReadReport.errors`` and counted, and a warning says how many were skipped. Chat messages
after a conversation's last assistant message (no action follows them) are counted in
``ReadReport.unanswered_messages`` and named in the same warning and summary.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

from .schema import DataError, Episode, EpisodeValidationError

FORMATS = ("episodes", "openai_chat", "chatgpt_export")
CHAT_ROLES = ("system", "user", "assistant", "tool", "function", "developer")
DEFAULT_AGENT = "assistant"
NO_NEW_INPUT = "(no new input)"  # state of an assistant turn that directly follows another


class SkippedRecordsWarning(UserWarning):
    """A lenient read skipped bad records or found chat messages no action follows; the
    ``ReadReport`` lists them."""


@dataclass
class ReadReport:
    """What a reader produced: the good episodes, the errors and how many records were skipped.

    ``unanswered_messages`` counts chat messages after a conversation's last assistant
    message: no action follows them, so they cannot become a step and are left out.
    """

    episodes: list[Episode] = field(default_factory=list)
    errors: list[DataError] = field(default_factory=list)
    skipped: int = 0
    path: str | None = None
    format: str | None = None
    unanswered_messages: int = 0

    def summary(self, first_error: bool = True) -> str:
        """One line for logs and the CLI, e.g. ``read 300 episodes from x.jsonl; skipped 2 ...``
        (``first_error``: name the first skipped record, for callers that do not list them all)."""
        text = f"read {len(self.episodes)} episodes from {self.path or '<input>'}"
        if self.format:
            text += f" ({self.format})"
        if self.skipped:
            text += f"; skipped {self.skipped} bad record{'s' if self.skipped != 1 else ''}"
            text += f" (first: {self.errors[0]})" if self.errors and first_error else ""
        else:
            text += "; no bad records"
        if self.unanswered_messages:
            count = self.unanswered_messages
            text += (f"; left out {count} message{'s' if count != 1 else ''} after the last "
                     "assistant message of a conversation (no action follows them)")
        return text

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)


class _Collector:
    """Applies the strict/lenient policy to a stream of (record builder) attempts."""

    def __init__(self, path: Path, fmt: str, strict: bool) -> None:
        self.report = ReadReport(path=str(path), format=fmt)
        self.strict = strict

    def attempt(self, build: Callable[[], Episode | _ChatEpisode]) -> None:
        try:
            built = build()
        except DataError as error:
            if self.strict:
                raise
            self.report.errors.append(error)
            self.report.skipped += 1
            return
        if isinstance(built, _ChatEpisode):
            self.report.unanswered_messages += built.unanswered
            built = built.episode
        self.report.episodes.append(built)

    def finish(self) -> ReadReport:
        if self.report.skipped or self.report.unanswered_messages:
            warnings.warn(self.report.summary(), SkippedRecordsWarning, stacklevel=3)
        return self.report


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, bytes) for each non-blank line, however long, without a BOM.

    Lines are decoded one by one (``_decode_line``) so a stray non-UTF-8 byte is an error
    of its line, which lenient mode can skip, rather than of the whole file.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if raw.strip():
                yield number, raw


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"not UTF-8 text: byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the "
            "line; save the file as UTF-8", path=str(path), line=number,
        ) from None


def _parse_line(raw: bytes, path: Path, number: int) -> Any:
    text = _decode_line(raw, path, number)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"malformed JSON: {error.msg} at column {error.colno}",
            path=str(path), line=number, field=None,
        ) from None
    except ValueError as error:  # e.g. an integer longer than Python's digit limit
        raise DataError(f"unreadable JSON: {error}", path=str(path), line=number) from None


def _json_lines(path: Path) -> Iterator[tuple[int, Callable[[], Any]]]:
    """Yield (line number, parser) for each non-blank line; parsing errors become DataErrors."""
    for number, raw in _raw_lines(path):
        yield number, lambda raw=raw, number=number: _parse_line(raw, path, number)


def read_episodes_jsonl(
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    known_agents: Iterable[str | int] | None = None,
    known_options: Iterable[str] | None = None,
) -> ReadReport:
    """Read episode JSONL (one episode object per line, blank lines ignored)."""
    path = Path(path)
    collector = _Collector(path, "episodes", strict)
    for number, parse in _json_lines(path):
        collector.attempt(
            lambda: Episode.from_dict(
                parse(), source=f"{path}:{number}",
                known_agents=known_agents, known_options=known_options,
            )
        )
    return collector.finish()


# ---------------------------------------------------------------------------------------
# Chat messages (shared by the OpenAI and ChatGPT-export readers)


@dataclass
class _Message:
    role: str
    text: str
    name: str | None = None


class _ChatEpisode(NamedTuple):
    """An episode built from a conversation, and how many trailing messages it left out."""

    episode: Episode
    unanswered: int


def _render_tool_call(name: str, arguments: Any) -> str:
    """Tool calls become part of the action text, so a policy can learn to emit them."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    return f"[tool call] {name}({arguments})"


def _render_message(message: _Message) -> str:
    label = message.role if message.name is None else f"{message.role} ({message.name})"
    return f"{label}: {message.text}"


def _messages_to_episode(
    messages: Sequence[_Message],
    metadata: dict[str, Any],
    *,
    state_context: str,
    fail: Callable[[str, str], DataError],
) -> _ChatEpisode:
    """One step per assistant message; its state is the context that preceded it.

    ``state_context="new"`` keeps only the messages since the previous assistant message
    (the sequence model sees earlier steps itself, and long histories would otherwise be
    cut by the encoder's length limit); ``"full"`` keeps the whole conversation so far.
    Messages after the last assistant message pair with no action; they are counted in
    the result (``unanswered``), so the reader can report them.
    """
    states: list[str] = []
    actions: list[str] = []
    agents: list[str] = []
    pending: list[_Message] = []
    history: list[_Message] = []
    for message in messages:
        if message.role != "assistant":
            pending.append(message)
            history.append(message)
            continue
        context = history if state_context == "full" else pending
        states.append("\n".join(_render_message(m) for m in context) or NO_NEW_INPUT)
        actions.append(message.text)
        agents.append(message.name or DEFAULT_AGENT)
        history.append(message)
        pending = []
    if not actions:
        raise fail("messages", "empty episode: the conversation has no assistant message")
    named = any(agent != DEFAULT_AGENT for agent in agents)
    record = {
        "states": states,
        "actions": actions,
        "agent_ids": agents if named else None,
        "metadata": metadata,
    }
    if record["agent_ids"] is None:
        del record["agent_ids"]
    return _ChatEpisode(Episode.from_dict(record, source=None), unanswered=len(pending))


def _check_state_context(state_context: str) -> None:
    if state_context not in ("new", "full"):
        raise ValueError(f"state_context must be 'new' or 'full', got {state_context!r}")


# ---------------------------------------------------------------------------------------
# OpenAI chat-format JSONL


def _openai_content(value: Any, where: str, fail: Callable[[str, str], DataError]) -> str:
    """Content is a string, null (tool-call-only turns) or a list of typed parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        pieces = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif isinstance(part, Mapping) and isinstance(part.get("type"), str):
                pieces.append(f"[{part['type']}]")  # images, audio: keep a marker, not bytes
            else:
                raise fail(f"{where}[{j}]", "content parts must be strings or typed objects")
        return "\n".join(pieces)
    raise fail(where, f"must be a string, a list of parts or null, got {type(value).__name__}")


def _openai_message(raw: Any, i: int, fail: Callable[[str, str], DataError]) -> _Message:
    where = f"messages[{i}]"
    if not isinstance(raw, Mapping):
        raise fail(where, "each message must be an object")
    role = raw.get("role")
    if role not in CHAT_ROLES:
        raise fail(f"{where}.role", f"must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise fail(f"{where}.name", "must be a string")
    text = _openai_content(raw.get("content"), f"{where}.content", fail)
    if role == "assistant":
        calls = []
        for j, call in enumerate(raw.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                raise fail(f"{where}.tool_calls[{j}].function", "needs a name and arguments")
            calls.append(_render_tool_call(function["name"], function.get("arguments", "")))
        legacy = raw.get("function_call")
        if isinstance(legacy, Mapping) and isinstance(legacy.get("name"), str):
            calls.append(_render_tool_call(legacy["name"], legacy.get("arguments", "")))
        text = "\n".join([t for t in [text, *calls] if t])
        if not text:
            raise fail(where, "assistant message has neither content nor tool calls")
    elif role in ("tool", "function"):
        # The tool's identity tells the policy which call this result answers.
        name = name or raw.get("tool_call_id")
    return _Message(role=role, text=text, name=name)


def read_openai_chat_jsonl(
    path: str | os.PathLike[str], *, strict: bool = True, state_context: str = "new"
) -> ReadReport:
    """Read OpenAI chat-format JSONL; ``name`` on assistant messages tells agents apart."""
    _check_state_context(state_context)
    path = Path(path)
    collector = _Collector(path, "openai_chat", strict)
    for number, parse in _json_lines(path):

        def build(number: int = number, parse: Callable[[], Any] = parse) -> _ChatEpisode:
            def fail(field_name: str, message: str) -> DataError:
                return EpisodeValidationError(message, path=str(path), line=number, field=field_name)

            record = parse()
            if not isinstance(record, Mapping):
                raise fail(None, "each line must be a JSON object with a 'messages' list")
            messages = record.get("messages")
            if not isinstance(messages, list):
                raise fail("messages", "missing or not a list")
            parsed = [_openai_message(m, i, fail) for i, m in enumerate(messages)]
            metadata = record.get("metadata") or {}
            if not isinstance(metadata, Mapping):
                raise fail("metadata", "must be an object")
            metadata = {**metadata, "source": f"{path.name}:{number}"}
            return _relocated(
                lambda: _messages_to_episode(parsed, metadata, state_context=state_context, fail=fail),
                path, number,
            )

        collector.attempt(build)
    return collector.finish()


def _relocated(build: Callable[[], _ChatEpisode], path: Path, line: int | None) -> _ChatEpisode:
    """Give schema errors raised on a derived record the location of the input record."""
    try:
        return build()
    except EpisodeValidationError as error:
        if error.path is None:
            raise EpisodeValidationError(error.reason, path=str(path), line=line, field=error.field) from None
        raise


# ---------------------------------------------------------------------------------------
# ChatGPT data export (conversations.json)


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, element) for each element of a top-level JSON array, with its start line.

    Parsing element by element keeps the line of each conversation for error messages.
    """
    text = _read_text(path)
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if position >= len(text) or text[position] != "[":
        raise DataError("expected a JSON array of conversations", path=str(path), line=1)
    position = _skip_space(text, position + 1)
    line = 1 + text.count("\n", 0, position)
    counted = position
    if position < len(text) and text[position] == "]":
        return
    while True:
        line += text.count("\n", counted, position)
        counted = position
        try:
            element, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(f"malformed JSON: {error.msg} at column {error.colno}",
                            path=str(path), line=error.lineno) from None
        yield line, element
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
            continue
        if position < len(text) and text[position] == "]":
            return
        bad_line = 1 + text.count("\n", 0, position)
        raise DataError("malformed JSON: expected ',' or ']' between conversations",
                        path=str(path), line=bad_line)


def _read_text(path: Path) -> str:
    """The whole file as text (a UTF-8 BOM dropped); bad bytes are located by line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"not UTF-8 text: byte 0x{data[error.start]:02x} cannot be decoded; save the file "
            "as UTF-8", path=str(path), line=1 + data.count(b"\n", 0, error.start),
        ) from None


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _export_text(content: Any, where: str, fail: Callable[[str, str], DataError]) -> str:
    """Text of an export message: parts for text, ``text`` for code and tool output."""
    if not isinstance(content, Mapping):
        raise fail(where, "message content must be an object")
    parts = content.get("parts")
    if isinstance(parts, list):
        pieces = []
        for part in parts:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, Mapping):
                pieces.append(part.get("text") if isinstance(part.get("text"), str)
                              else f"[{part.get('content_type', 'attachment')}]")
        return "\n".join(p for p in pieces if p)
    for key in ("text", "result"):
        if isinstance(content.get(key), str):
            return content[key]
    return f"[{content.get('content_type', 'unknown content')}]"


def _export_branch(conversation: Mapping[str, Any], fail: Callable[[str, str], DataError]) -> list[Any]:
    """Node ids from the root to ``current_node`` (the branch the user last saw)."""
    mapping = conversation.get("mapping")
    if not isinstance(mapping, Mapping) or not mapping:
        raise fail("mapping", "missing or empty")
    node_id = conversation.get("current_node")
    if node_id is None:
        raise fail("current_node", "missing; cannot tell which branch of the conversation to follow")
    chain = []
    seen = set()
    while node_id is not None:
        if node_id in seen:
            raise fail(f"mapping.{node_id}.parent", "the parent links form a cycle")
        node = mapping.get(node_id)
        if not isinstance(node, Mapping):
            field_name = "current_node" if not chain else f"mapping.{chain[-1]}.parent"
            raise fail(field_name, f"points to unknown node {node_id!r}")
        seen.add(node_id)
        chain.append(node_id)
        node_id = node.get("parent")
    chain.reverse()
    return chain


def _export_conversation(
    conversation: Any, index: int, fail: Callable[[str, str], DataError], state_context: str
) -> _ChatEpisode:
    if not isinstance(conversation, Mapping):
        raise fail(None, "each conversation must be an object")
    messages = []
    for node_id in _export_branch(conversation, fail):
        raw = conversation["mapping"][node_id].get("message")
        if raw is None:
            continue  # the root and some system placeholders carry no message
        where = f"mapping.{node_id}.message"
        if not isinstance(raw, Mapping):
            raise fail(where, "must be an object")
        author = raw.get("author")
        role = author.get("role") if isinstance(author, Mapping) else None
        if role not in CHAT_ROLES:
            raise fail(f"{where}.author.role", f"must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        text = _export_text(raw.get("content"), f"{where}.content", fail)
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), Mapping) else {}
        if not text.strip() and (role == "system" or meta.get("is_visually_hidden_from_conversation")):
            continue  # hidden, empty system scaffolding
        name = author.get("name") if isinstance(author.get("name"), str) else None
        recipient = raw.get("recipient")
        if role == "assistant" and isinstance(recipient, str) and recipient != "all":
            # An assistant message addressed to a tool is a tool call.
            text = _render_tool_call(recipient, text)
            name = None
        if role == "assistant" and not text:
            continue
        messages.append(_Message(role=role, text=text, name=name if role != "assistant" else None))
    metadata: dict[str, Any] = {"source": f"conversation {index}"}
    for key in ("title", "conversation_id", "id", "create_time"):
        if conversation.get(key) is not None:
            metadata[key] = conversation[key]
    return _messages_to_episode(messages, metadata, state_context=state_context, fail=fail)


def read_chatgpt_export(
    path: str | os.PathLike[str], *, strict: bool = True, state_context: str = "new"
) -> ReadReport:
    """Read a ChatGPT data export ``conversations.json`` (one episode per conversation)."""
    _check_state_context(state_context)
    path = Path(path)
    collector = _Collector(path, "chatgpt_export", strict)
    try:
        for index, (line, conversation) in enumerate(_iter_json_array(path)):

            def build(index: int = index, line: int = line, conversation: Any = conversation) -> _ChatEpisode:
                def fail(field_name: str | None, message: str) -> DataError:
                    return EpisodeValidationError(
                        f"conversation {index}: {message}", path=str(path), line=line, field=field_name
                    )

                return _relocated(
                    lambda: _export_conversation(conversation, index, fail, state_context), path, line
                )

            collector.attempt(build)
    except DataError as error:
        # Malformed JSON ends the array: nothing after it can be located reliably.
        if strict:
            raise
        collector.report.errors.append(error)
        collector.report.skipped += 1
    return collector.finish()


# ---------------------------------------------------------------------------------------
# Format detection, loading, writing, conversion

_READERS: dict[str, Callable[..., ReadReport]] = {
    "episodes": read_episodes_jsonl,
    "openai_chat": read_openai_chat_jsonl,
    "chatgpt_export": read_chatgpt_export,
}


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tell the formats apart by the first record's keys (extension as a tiebreak).

    A JSON array is judged by its first element, JSONL by its first line that holds a JSON
    object: a malformed line before it is left to the reader, which names it (strict) or
    skips and counts it (lenient).
    """
    path = Path(path)
    lines = _raw_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError("cannot detect the format: the file is empty", path=str(path))
    if first[1].lstrip().startswith(b"["):
        return _array_format(path)
    first_error: DataError | None = None
    for number, raw in itertools.chain([first], lines):
        try:
            record = _parse_line(raw, path, number)
        except DataError as error:
            if number == first[0] and path.name.endswith(".json"):
                return "chatgpt_export"  # a pretty-printed export; its reader locates errors
            first_error = first_error or error
            continue
        if not isinstance(record, Mapping):
            first_error = first_error or DataError("not a JSON object", path=str(path), line=number)
            continue
        if "messages" in record:
            return "openai_chat"
        if "mapping" in record:
            return "chatgpt_export"
        return "episodes"
    raise DataError(
        f"cannot detect the format: no line holds a JSON object (first problem: line "
        f"{first_error.line}: {first_error.reason}); pass format= one of {', '.join(FORMATS)} "
        "(--format on the command line)", path=str(path), line=first_error.line,
    )


def _array_format(path: Path) -> str:
    """``chatgpt_export`` when the array's first element looks like a ChatGPT conversation (or
    cannot be read: the export reader then says where); ``episodes_array`` for any other
    record (episodes, chat records), which belong one per line."""
    try:
        element = _first_array_element(path)
    except ValueError:
        return "chatgpt_export"  # empty or malformed: the export reader says where
    if isinstance(element, Mapping) and not ({"mapping", "current_node"} & element.keys()):
        return "episodes_array"
    return "chatgpt_export"


def _first_array_element(path: Path, prefix_bytes: int = 1 << 16) -> Any:
    """The first element of the JSON array in ``path``, decoded from the shortest prefix
    (growing 4x) that holds it: exports run to hundreds of MB, and their reader reads them
    whole anyway. ValueError when the file has no readable first element."""
    data = b""
    with open(path, "rb") as handle:
        while True:
            data += handle.read(prefix_bytes - len(data))
            whole = len(data) < prefix_bytes
            # A character cut at the prefix's end decodes to U+FFFD; the decode then fails and
            # a longer prefix follows (bad bytes are the reader's to report, by line).
            text = data.decode("utf-8-sig", errors="replace")
            start = _skip_space(text, _skip_space(text, 0) + 1)
            try:
                return json.JSONDecoder().raw_decode(text, start)[0]
            except json.JSONDecodeError as error:
                if whole:
                    raise ValueError(f"no readable first element: {error}") from error
            prefix_bytes *= 4


def load_episodes(
    path: str | os.PathLike[str], *, format: str = "auto", strict: bool = True
) -> ReadReport:
    """Read any supported log file into episodes; ``format`` is auto-detected by default."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "episodes_array":
        raise DataError("a JSON array of records (episodes or chat conversations) is not "
                        "supported; write one record per line (JSONL)", path=str(path), line=1)
    if fmt not in _READERS:
        raise ValueError(f"unknown format {format!r}; choose auto or one of {', '.join(FORMATS)}")
    return _READERS[fmt](path, strict=strict)


def write_episodes_jsonl(episodes: Iterable[Episode], path: str | os.PathLike[str]) -> int:
    """Write normalised episode JSONL atomically (temp file, then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            for episode in episodes:
                handle.write(json.dumps(episode.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
                count += 1
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return count


def convert(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    format: str = "auto",
    strict: bool = True,
) -> ReadReport:
    """Read ``input_path`` in any supported format and write normalised episode JSONL."""
    report = load_episodes(input_path, format=format, strict=strict)
    write_episodes_jsonl(report.episodes, output_path)
    return report
