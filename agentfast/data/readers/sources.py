"""Where records come from: JSONL lines, the elements of a JSON document, Parquet rows.

Every source streams. JSONL is read line by line; a JSON document (one array of records, a
``{"conversations": [...]}`` wrapper or a single record object) is decoded element by element
from a buffer of a few MiB (``JsonStream``), so a 1 GB ``conversations.json`` never sits in
memory whole; Parquet is read in row batches. Each record comes with a ``Location`` (file,
line, record index) so errors say where, and a parser that raises the record's own
``DataError`` (bad JSON, bad UTF-8, nesting too deep, a lone surrogate), which lenient mode
can skip.

Every input is opened once (``InputSource``) and read front to back, so a pipe, a FIFO, a
process substitution (``<(zcat logs.gz)``) or standard input (``-``) reads like a file: the
container is told from bytes looked at before they are read, never by reading twice.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

from ...errors import FileAccessError, accessing
from ..schema import DataError, EpisodeValidationError

PARQUET_MAGIC = b"PAR1"
CHUNK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 1024
STDIN = "-"  # the path that names standard input
STDIN_NAME = "<stdin>"
# Bytes that are not UTF-8 are decoded to lone surrogates (errors="surrogateescape"), so a bad
# byte is an error of the record that holds it rather than of the whole file.
_BAD_BYTE = re.compile("[\udc80-\udcff]")
# One token of the value scanner: a whole string (group 1 is its closing quote, None when the
# buffer ends inside it) or a bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(")?|[\[\]{}]', re.S)
_SPACE = re.compile(r"[ \t\r\n]*")
_SCALAR = re.compile(r"[^,\]}\s]*")


@dataclass(frozen=True)
class Location:
    """Where a record is: file, line where it starts (None for Parquet), and its index in a
    JSON document or Parquet file (None for JSONL, where the line says it all)."""

    path: str
    line: int | None
    index: int | None = None
    unit: str = "record"  # "record", "conversation" or "row": how errors name the index

    def named(self, unit: str) -> "Location":
        """The same place, its index named as ``unit`` (e.g. "conversation")."""
        return Location(self.path, self.line, self.index, unit if self.unit == "record" else self.unit)

    @property
    def record(self) -> str | None:
        return None if self.index is None else f"{self.unit} {self.index}"

    def error(self, field: str | None, message: str) -> EpisodeValidationError:
        return EpisodeValidationError(message, path=self.path, line=self.line, field=field,
                                      record=self.record)

    @property
    def place(self) -> str:
        """The record's place without the file name: ``line 3``, ``record 2``, ``row 5``."""
        return self.record if self.record is not None else f"line {self.line}"

    @property
    def source(self) -> str:
        """``metadata["source"]`` of the episodes built from the record: file name and place."""
        name = Path(self.path).name
        if self.index is not None and self.line is None:
            return f"{name}:{self.record}"
        if self.index is not None:
            return f"{name}:{self.line} ({self.record})"
        return f"{name}:{self.line}"


class RawRecord(NamedTuple):
    location: Location
    parse: Callable[[], Any]  # the record's JSON value; raises its DataError


def _utf8_error(text: str, location: Location) -> DataError | None:
    match = _BAD_BYTE.search(text)
    if match is None:
        return None
    byte = ord(match.group()) - 0xDC00
    return DataError(f"not UTF-8 text: byte 0x{byte:02x} cannot be decoded; save the file as UTF-8",
                     path=location.path, line=location.line, record=location.record)


# ---------------------------------------------------------------------------------- input

class InputSource:
    """A log opened once: a file, a FIFO or pipe, or standard input (``"-"``).

    ``peek(n)`` returns the first ``n`` bytes without consuming them (they are kept and read
    again by ``stream()``), so the container can be told apart before reading and a stream
    is never opened or read twice. ``name`` is what errors and reports call it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        given = os.fspath(path)
        self.stdin = given == STDIN
        self.name = STDIN_NAME if self.stdin else given
        if self.stdin:
            self._raw: BinaryIO = getattr(sys.stdin, "buffer", sys.stdin)
        else:
            with accessing(given, "read"):
                if os.path.isdir(given):
                    raise IsADirectoryError(21, "it is a directory, not a file", given)
                self._raw = open(given, "rb")
        self.regular, self.size = _file_kind(self._raw)
        self._head = bytearray()
        self._consumed = False

    @property
    def path(self) -> Path:
        return Path(self.name)

    def peek(self, size: int) -> bytes:
        """The first ``size`` bytes (fewer at the end), left to be read again."""
        if self._consumed:
            raise RuntimeError("peek after the stream was handed out")
        with accessing(self.name, "read"):
            while len(self._head) < size:
                chunk = self._raw.read(min(size - len(self._head), CHUNK_BYTES))
                if not chunk:
                    break
                self._head += chunk
        return bytes(self._head[:size])

    def stream(self) -> BinaryIO:
        """The whole input from its first byte, as a buffered binary file (read once)."""
        if self._consumed:
            raise RuntimeError(f"{self.name} is read once; it was handed out already")
        self._consumed = True
        return io.BufferedReader(_Replay(bytes(self._head), self._raw, self.name), CHUNK_BYTES)

    def seekable_file(self) -> Any:
        """A seekable file of the whole input (Parquet reads its footer first): the file
        itself, or standard input or a pipe copied to an unnamed temporary file."""
        if self.regular and not self.stdin:
            self._consumed = True
            with accessing(self.name, "read"):
                self._raw.seek(0)
            return self._raw
        spool = tempfile.TemporaryFile()  # unlinked at once: nothing is left behind
        with accessing(self.name, "read"):
            shutil.copyfileobj(self.stream(), spool, CHUNK_BYTES)
        spool.seek(0)
        return spool

    def close(self) -> None:
        if not self.stdin:
            self._raw.close()

    def __enter__(self) -> "InputSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _file_kind(handle: Any) -> tuple[bool, int | None]:
    """(regular file?, its size or None for streams)."""
    try:
        info = os.fstat(handle.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return False, None
    regular = stat.S_ISREG(info.st_mode)
    return regular, info.st_size if regular else None


class _Replay(io.RawIOBase):
    """The bytes peeked at, then the rest of the underlying stream; read errors name it."""

    def __init__(self, head: bytes, raw: BinaryIO, name: str) -> None:
        self._head = memoryview(head)
        self._raw = raw
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        with accessing(self._name, "read"):
            data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def as_source(source: "InputSource | str | os.PathLike[str]") -> tuple[InputSource, bool]:
    """(the source, whether the caller opened it here and must close it)."""
    if isinstance(source, InputSource):
        return source, False
    return InputSource(source), True


# ------------------------------------------------------------------------------- progress

class _Progress:
    """A byte or row counter under a tqdm bar, shown only on a terminal (tqdm imported then)."""

    def __init__(self, enabled: bool, total: int, unit: str, desc: str) -> None:
        self.bar = None
        self.pending = 0
        self.step = 1 << 20 if unit == "B" else 1  # bytes are shown per MiB
        if enabled:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, disable=None, leave=False)
            self.bar = None if bar.disable else bar

    def advance(self, amount: int) -> None:
        if self.bar is None:
            return
        self.pending += amount
        if self.pending >= self.step:
            self.bar.update(self.pending)
            self.pending = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.pending)
            self.bar.close()


# ---------------------------------------------------------------------------------- JSONL

def jsonl_records(source: InputSource, progress: bool = False) -> Iterator[RawRecord]:
    """One record per non-blank line; a line that is not JSON or not UTF-8 is an error of its
    own line (the next lines still read)."""
    bar = _Progress(progress, source.size, "B", f"reading {source.path.name}")
    try:
        with source.stream() as handle:
            for number, raw in enumerate(handle, start=1):
                bar.advance(len(raw))
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                if raw.strip():
                    location = Location(source.name, number)
                    yield RawRecord(location, lambda raw=raw, location=location: parse_line(raw, location))
    finally:
        bar.close()


def parse_line(raw: bytes, location: Location) -> Any:
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise DataError(
            f"not UTF-8 text: byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the "
            "line; save the file as UTF-8", path=location.path, line=location.line,
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        content_end = len(text.rstrip())
        if error.pos >= content_end:  # the value is cut off: say where the line ends
            raise DataError("malformed JSON: the line ends before its JSON value does (was it "
                            f"cut off?); {error.msg}", path=location.path, line=location.line,
                            column=content_end + 1) from None
        raise DataError(f"malformed JSON: {error.msg}", path=location.path, line=location.line,
                        column=error.colno) from None
    except RecursionError:
        raise nesting_error(location) from None
    except ValueError as error:  # e.g. an integer longer than Python's digit limit
        raise DataError(f"unreadable JSON: {error}", path=location.path, line=location.line) from None
    if _MAYBE_LONE_SURROGATE.search(text):
        check_surrogates(value, location)
    return value


# ------------------------------------------------------------------ text JSON cannot carry

# A \uD800-\uDFFF escape that is not half of a pair; only gates the exact check below
# (an escaped backslash before "ud83d" matches too, and the check then finds nothing).
_MAYBE_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def nesting_error(location: Location) -> DataError:
    return location.error(None, "JSON nested too deeply to read (thousands of levels of "
                          f"arrays or objects; the limit is about {sys.getrecursionlimit()})")


def check_surrogates(value: Any, location: Location) -> None:
    """A field error for the first string (or key) holding half of a UTF-16 surrogate pair
    (a ``\\ud83d`` escape without its partner: half an emoji). Such text has no UTF-8 form,
    so it could be neither cached nor written; the record is bad, as bad bytes would be."""
    found = _first_surrogate(value, "")
    if found is not None:
        field, char = found
        field = field.encode("utf-8", "backslashreplace").decode("utf-8")  # printable
        raise location.error(field or None, f"text holds a lone surrogate \\u{ord(char):04x} "
                             "(half of a UTF-16 pair, e.g. an emoji cut in two); it has no "
                             "UTF-8 form")


def _first_surrogate(value: Any, where: str) -> tuple[str, str] | None:
    stack = [(value, where)]  # iterative: the value may be nested deeply
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            match = _SURROGATE.search(item)
            if match:
                return where, match.group()
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                match = _SURROGATE.search(key)
                child_where = f"{where}.{key}" if where else key
                if match:
                    return child_where, match.group()
                stack.append((child, child_where))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


# -------------------------------------------------------------------------- JSON document

class JsonStream:
    """A UTF-8 JSON text read in chunks, decoded value by value with ``json.JSONDecoder``.

    The buffer holds the value being decoded plus at most a chunk; consumed text is dropped
    and its newlines counted, so every value knows its start line.
    """

    def __init__(self, source: "InputSource | str | os.PathLike[str]", chunk_bytes: int = CHUNK_BYTES,
                 progress: bool = False) -> None:
        self.source, self._owned = as_source(source)
        self.path = self.source.path
        self.chunk_bytes = chunk_bytes
        self.handle = self.source.stream()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.json = json.JSONDecoder()
        self.buffer = ""
        self.pos = 0
        self.eof = False
        self.dropped = 0  # characters compacted away (a column is known only on later lines)
        self.counted_pos = 0  # buffer position up to which newlines are counted...
        self.counted_line = 1  # ...and the line number there
        self.started = False
        self.bad_bytes = False  # a chunk held a byte that is not UTF-8 (then values are searched)
        self.bar = _Progress(progress, self.source.size, "B", f"reading {self.path.name}")

    def close(self) -> None:
        self.handle.close()
        if self._owned:
            self.source.close()
        self.bar.close()

    # -- buffer management
    def _read(self, at_least: int = 0) -> bool:
        """Append at least ``at_least`` more bytes (a chunk when 0) to the buffer; False at EOF."""
        if self.eof:
            return False
        data = self.handle.read(max(self.chunk_bytes, at_least))
        self.bar.advance(len(data))
        if not self.started:
            self.started = True
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
        if not data:
            self.eof = True
            self._append(self.decoder.decode(b"", final=True))
            return False
        self._append(self.decoder.decode(data))
        return True

    def _append(self, text: str) -> None:
        if not text.isascii() and _BAD_BYTE.search(text):
            self.bad_bytes = True
        self.buffer += text

    def _compact(self) -> None:
        if self.pos > self.chunk_bytes:
            self.line_at(self.pos)
            self.buffer = self.buffer[self.pos:]
            self.counted_pos -= self.pos
            self.dropped += self.pos
            self.pos = 0

    def line_at(self, pos: int) -> int:
        """Line of buffer position ``pos`` (positions only move forward)."""
        self.counted_line += self.buffer.count("\n", self.counted_pos, pos)
        self.counted_pos = pos
        return self.counted_line

    def peek(self) -> str:
        """The next non-space character ('' at the end), the position left on it."""
        while True:
            self.pos = _SPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._read():
                return ""

    def error(self, message: str, pos: int | None = None, location: Location | None = None) -> DataError:
        pos = self.pos if pos is None else max(pos, self.counted_pos)
        line = self.line_at(pos)
        return DataError(message, path=str(self.path), line=line, column=self.column_at(pos),
                         record=None if location is None else location.record)

    def column_at(self, pos: int) -> int | None:
        """1-based column of buffer position ``pos``; None when its line began in text that
        was compacted away."""
        line_start = self.buffer.rfind("\n", 0, pos) + 1
        if line_start == 0 and self.dropped:
            return None
        return pos - line_start + 1

    def expect(self, chars: str, what: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            raise self.error(f"malformed JSON: expected {what}, found "
                             f"{'the end of the file' if not found else repr(found)}")
        self.pos += 1
        return found

    # -- values
    def value(self, location: Location | None = None) -> tuple[Any, DataError | None]:
        """Decode the value at the current position; returns it and the error of the record
        it belongs to (a bad byte, nesting too deep, a lone surrogate): the value is still
        consumed, so a lenient read goes on after it."""
        self.peek()
        start = self.pos
        while True:
            try:
                value, end = self.json.raw_decode(self.buffer, start)
            except json.JSONDecodeError as error:
                if self.eof or _value_end(self.buffer, start) is not None:
                    raise self._decode_error(error, start, location) from None
            except RecursionError:
                end = _value_end(self.buffer, start)
                if end is not None:
                    self.pos = end
                    return None, nesting_error(location or Location(str(self.path), self.line_at(start)))
                if self.eof:
                    raise self.error("malformed JSON: the file ends inside a value nested too "
                                     "deeply to read", start, location) from None
            except ValueError as error:  # an integer longer than Python's digit limit
                raise self.error(f"unreadable JSON: {error}", start, location) from None
            else:
                # A number cut at the buffer's end decodes as a shorter number: it is whole
                # only when a delimiter follows it.
                whole = end < len(self.buffer) and (
                    isinstance(value, (dict, list, str)) or _SCALAR.match(self.buffer, start).end() < len(self.buffer))
                if whole or self.eof:
                    break
            self._read(at_least=len(self.buffer) - start)
        self.pos = end
        bad = None
        if self.bad_bytes and _BAD_BYTE.search(self.buffer, start, end) is not None:
            location = location or Location(str(self.path), self.line_at(start))
            bad = _utf8_error(self.buffer[start:end], location)
        elif _MAYBE_LONE_SURROGATE.search(self.buffer, start, end):
            try:
                check_surrogates(value, location or Location(str(self.path), self.line_at(start)))
            except DataError as error:
                bad = error
        return value, bad

    def _decode_error(self, error: json.JSONDecodeError, start: int, location: Location | None) -> DataError:
        bad = _BAD_BYTE.search(self.buffer, start, error.pos + 1) if self.bad_bytes else None
        if bad is not None:
            byte = ord(bad.group()) - 0xDC00
            return self.error(f"not UTF-8 text: byte 0x{byte:02x} cannot be decoded; save the "
                              "file as UTF-8", bad.start(), location)
        content_end = len(self.buffer.rstrip())
        if self.eof and error.pos >= content_end:  # cut off: point at the end of the text
            return self.error("malformed JSON: the file ends before the JSON value does (was it "
                              f"cut off?); {error.msg}", content_end, location)
        return self.error(f"malformed JSON: {error.msg}", error.pos, location)

    def elements(self, unit: str = "record") -> Iterator[tuple[Location, Any, DataError | None]]:
        """The elements of the array at the current position, each with its location."""
        self.expect("[", "'['")
        if self.peek() == "]":
            self.pos += 1
            return
        index = 0
        while True:
            self.peek()
            location = Location(str(self.path), self.line_at(self.pos), index, unit)
            value, bad = self.value(location)
            yield location, value, bad
            self._compact()
            if self.expect(",]", "',' or ']' between records") == "]":
                return
            index += 1


def _value_end(text: str, start: int) -> int | None:
    """End of the JSON value starting at ``text[start]`` if the text holds all of it, else None.

    Strings are matched whole by one regex, so the Python loop runs once per string or
    bracket. Only called when decoding failed: it tells a value cut at the buffer's end (read
    more) from a malformed one (report it).
    """
    if start >= len(text):
        return None
    if text[start] not in "[{\"":
        end = _SCALAR.match(text, start).end()
        return end if end < len(text) else None
    depth = 0
    for match in _TOKEN.finditer(text, start):
        token = match.group()
        if token[0] == '"':
            if match.group(1) is None:
                return None
        elif token in "[{":
            depth += 1
        else:
            depth -= 1
        if depth <= 0:
            return match.end()
    return None


def json_document_records(source: "InputSource | str | os.PathLike[str]",
                          progress: bool = False) -> Iterator[RawRecord]:
    """The records of a JSON document: the elements of a top-level array, the conversations of
    a ``{"conversations": [...]}`` wrapper (ChatGPT exports come in both shapes), or the one
    record a top-level object is.

    Malformed JSON ends the document (nothing after it can be located reliably): it is
    yielded as the last record's error.
    """
    stream = JsonStream(source, progress=progress)
    try:
        # Usually one value; more (JSON values one after another, JSONL whose first line was
        # too long to sniff) are read the same way.
        while (first := stream.peek()) != "":
            if first == "[":
                yield from _element_records(stream, stream.elements())
            elif first == "{":
                yield from _object_records(stream)
            else:
                raise stream.error("malformed JSON: expected a JSON array of records or a JSON object")
    except DataError as error:
        yield RawRecord(Location(str(stream.path), error.line), _raiser(error))
    finally:
        stream.close()


def _raiser(error: DataError) -> Callable[[], Any]:
    def parse() -> Any:
        raise error
    return parse


def _element_records(stream: JsonStream, elements: Iterator) -> Iterator[RawRecord]:
    for location, value, bad in elements:
        yield RawRecord(location, _raiser(bad) if bad is not None else (lambda value=value: value))


def looks_like_conversation(value: Any) -> bool:
    """A ChatGPT export conversation: an object with a message tree."""
    return isinstance(value, dict) and ("mapping" in value or "current_node" in value)


def _object_records(stream: JsonStream) -> Iterator[RawRecord]:
    """A top-level object, key by key: ``conversations`` holding ChatGPT conversations is a
    wrapper whose conversations stream one by one; any other object is one record."""
    start_line = stream.line_at(stream.pos)
    stream.expect("{", "'{'")
    record: dict[str, Any] = {}
    wrapper = False
    bad_bytes: DataError | None = None
    if stream.peek() == "}":
        stream.pos += 1
    else:
        while True:
            key, bad = stream.value()
            if not isinstance(key, str):
                raise stream.error("malformed JSON: object keys must be strings")
            stream.expect(":", "':' after an object key")
            if key == "conversations" and stream.peek() == "[" and not wrapper:
                elements = stream.elements(unit="conversation")
                first = next(elements, None)
                if first is not None and looks_like_conversation(first[1]):
                    wrapper = True
                    yield from _element_records(stream, _chain_first(first, elements))
                else:  # a ShareGPT record's conversation: its messages are values
                    record[key] = []
                    for _, value, bad in ([] if first is None else _chain_first(first, elements)):
                        record[key].append(value)
                        bad_bytes = bad_bytes or bad
            else:
                record[key], bad = stream.value()
                bad_bytes = bad_bytes or bad
            if stream.expect(",}", "',' or '}' in an object") == "}":
                break
    if not wrapper:
        location = Location(str(stream.path), start_line)
        yield RawRecord(location, _raiser(bad_bytes) if bad_bytes else (lambda: record))


def _chain_first(first: Any, rest: Iterator) -> Iterator:
    yield first
    yield from rest


# -------------------------------------------------------------------------------- Parquet

def open_parquet(source: InputSource) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` over the source (a stream is spooled to an unnamed
    temporary file first: Parquet keeps its index at the end)."""
    parquet = import_pyarrow_parquet()
    handle = source.seekable_file()
    try:
        return parquet.ParquetFile(handle)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise DataError(f"not a readable Parquet file: {error}", path=source.name) from None


def parquet_records(reader: Any, name: str, progress: bool = False) -> Iterator[RawRecord]:
    """One record per row of ``reader`` (``open_parquet``), read in batches of
    ``PARQUET_BATCH_ROWS`` rows. Nested columns (lists of message structs, maps) become the
    same lists and dicts JSON would give."""
    bar = _Progress(progress, reader.metadata.num_rows, "row", f"reading {Path(name).name}")
    index = 0
    try:
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist(maps_as_pydicts="strict"):
                yield RawRecord(Location(name, None, index, "row"), lambda row=row: row)
                index += 1
            bar.advance(batch.num_rows)
    finally:
        bar.close()


def import_pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ImportError("reading Parquet files needs pyarrow: pip install 'agentfast[parquet]' "
                          "(or pip install pyarrow)") from None
    return parquet


# ------------------------------------------------------------------------------ containers

SNIFF_BYTES = 8 * CHUNK_BYTES  # the head looked at to tell JSONL from one JSON document


def sniff_container(source: "InputSource | str | os.PathLike[str]") -> str:
    """``parquet``, ``jsonl`` (one record per line) or ``json`` (one JSON document), told from
    the head of the input without consuming it.

    A file that starts with '[' is a document. One that starts with '{' is JSONL when its
    first line holds a whole JSON value (or, that line being broken, a later line holds a
    JSON object): JSONL files put a record on each line, while a pretty-printed object opens
    with a lone '{' and a minified wrapper is one line far longer than a record.
    """
    source, owned = as_source(source)
    try:
        if source.peek(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
            return "parquet"
        first = first_content_byte(source)
        if first != b"{":
            return "json" if first == b"[" else "jsonl"
        lines = _head_lines(source, limit=SNIFF_BYTES)
    finally:
        if owned:
            source.close()
    if not lines:  # the first line runs past the limit: a minified document
        return "json"
    if _parses(lines[0]):
        return "jsonl"
    if lines[0].strip().lstrip(codecs.BOM_UTF8) == b"{":
        return "json"
    return "jsonl" if any(_is_object(line) for line in lines[1:]) else "json"


def first_content_byte(source: InputSource) -> bytes:
    """The first byte that is not white space (b"" for an empty input), left unread."""
    size = CHUNK_BYTES
    while True:
        data = source.peek(size)
        stripped = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
        stripped = stripped.lstrip()
        if stripped:
            return stripped[:1]
        if len(data) < size:
            return b""
        size *= 2


def _head_lines(source: InputSource, limit: int) -> list[bytes]:
    """The non-blank lines within the first ``limit`` bytes (only whole lines); empty when the
    first non-blank line is longer than that."""
    data = source.peek(limit)
    complete = len(data) < limit
    lines = data.split(b"\n")
    if not complete:
        lines = lines[:-1]
    return [line for line in lines if line.strip()]


def _loads(line: bytes) -> Any:
    """The line's JSON value; ``ValueError`` when it is not one. A value too deeply nested to
    decode counts as one when its brackets close on the line."""
    text = line.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    try:
        return json.loads(text)
    except RecursionError:
        stripped = text.strip()
        if stripped[:1] in ("{", "[") and _value_end(stripped, 0) == len(stripped):
            return {} if stripped[0] == "{" else []
        raise ValueError("not one JSON value") from None


def _parses(line: bytes) -> bool:
    try:
        _loads(line)
    except ValueError:
        return False
    return True


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(_loads(line), dict)
    except ValueError:
        return False


def records(source: InputSource, container: str, progress: bool = False) -> Iterator[RawRecord]:
    """The raw records of ``source`` in ``container`` (``sniff_container``); a Parquet source's
    format is told by ``open_parquet(source).schema_arrow.names`` instead."""
    if container == "parquet":
        return parquet_records(open_parquet(source), source.name, progress)
    if container == "json":
        return json_document_records(source, progress)
    return jsonl_records(source, progress)
