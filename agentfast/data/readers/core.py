"""Format detection, the one read loop every format shares, loading and conversion."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping

from ...atomic_files import atomic_open, same_file
from ...errors import FileAccessError, FileError
from ..schema import DataError, Episode
from .chat import check_state_context
from .chatgpt import build_conversation, conversations_of
from .openai import build_chat, build_preference
from .report import Built, Collector, ReadReport
from .sharegpt import build_sharegpt, is_sharegpt
from .sources import (
    InputSource,
    Location,
    RawRecord,
    first_content_byte,
    looks_like_conversation,
    open_parquet,
    parquet_records,
    records,
    sniff_container,
)

FORMATS = ("episodes", "openai_chat", "openai_preference", "sharegpt", "chatgpt_export")
DETECTION_RECORDS = 1000  # records looked at for one that tells the format


def build_episode(record: Any, location: Location, known_agents: Iterable[str | int] | None = None,
                  known_options: Iterable[str] | None = None) -> Built:
    try:
        episode = Episode.from_dict(record, known_agents=known_agents, known_options=known_options)
    except DataError as error:
        raise location.error(error.field, error.reason) from None
    return Built([episode], Counter())


Builder = Callable[[Any, Location, str], Built]
_BUILDERS: dict[str, Builder] = {
    "episodes": lambda record, location, state_context: build_episode(record, location),
    "openai_chat": build_chat,
    "openai_preference": build_preference,
    "sharegpt": build_sharegpt,
    "chatgpt_export": build_conversation,
}


def format_of(record: Any) -> str | None:
    """The format a record's keys tell, None when they tell none (not an object)."""
    if not isinstance(record, Mapping):
        return None
    if "messages" in record:
        return "openai_chat"
    if "input" in record and ("preferred_output" in record or "non_preferred_output" in record):
        return "openai_preference"
    if looks_like_conversation(record) or conversations_of(record) is not None:
        return "chatgpt_export"
    if "conversations" in record and is_sharegpt(record):
        return "sharegpt"
    return "episodes"


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a log file, one of ``FORMATS``, told by its first readable record's keys.

    The container (JSONL, one JSON document, Parquet) is told apart first; a malformed record
    before the first readable one is left to the reader, which names it (strict) or skips
    and counts it (lenient). Standard input and pipes can be read only once: give them to
    ``load_episodes`` (format ``"auto"``), which detects and reads in one pass.
    """
    with InputSource(path) as source:
        if not source.regular:
            raise ValueError(f"{source.name} is a stream, which can be read only once; "
                             "load_episodes(path) detects its format while reading it")
        return _open_records(source, "auto", progress=False)[0]


def _open_records(source: InputSource, format: str, progress: bool) -> tuple[str, Iterator[RawRecord]]:
    """(the format, the raw records of ``source``); ``"auto"`` is told from the records
    themselves, which are then read from where detection started: the input is read once."""
    container = sniff_container(source)
    if container == "parquet":
        reader = open_parquet(source)
        if format == "auto":
            columns = list(reader.schema_arrow.names)
            found = format_of(dict.fromkeys(columns, [{"from": ""}] if "conversations" in columns else None))
            format = found or "episodes"
        return format, parquet_records(reader, source.name, progress)
    empty = first_content_byte(source) == b""
    raws = records(source, container, progress)
    if format != "auto":
        return format, raws
    return _detected(raws, source.name, empty)


def _detected(raws: Iterator[RawRecord], name: str, empty: bool) -> tuple[str, Iterator[RawRecord]]:
    """The format the first readable record tells, and every record (those looked at first
    are kept, each parsed once)."""
    looked_at: list[RawRecord] = []
    first_error: DataError | None = None
    for raw in raws:
        try:
            value = raw.parse()
        except DataError as error:
            first_error = first_error or error
            looked_at.append(raw)
            found = None
        else:
            looked_at.append(RawRecord(raw.location, lambda value=value: value))
            found = format_of(value)
            if found is None:
                first_error = first_error or DataError("not a JSON object", path=name, line=raw.location.line)
        if found is not None:
            return found, itertools.chain(looked_at, raws)
        if len(looked_at) >= DETECTION_RECORDS:
            break
    if first_error is None:
        raise DataError(f"no episodes: {'the file is empty' if empty else 'it holds no records'}",
                        path=name)
    where = f"line {first_error.line}" if first_error.line is not None else "the first record"
    raise DataError(
        f"cannot detect the format: no record is a JSON object (first problem: {where}: "
        f"{first_error.reason}); pass format= one of {', '.join(FORMATS)} (--format on the "
        "command line)", path=name, line=first_error.line,
    )


def read_records(
    path: str | os.PathLike[str],
    format: str,
    *,
    strict: bool = True,
    state_context: str = "new",
    progress: bool = False,
    builder: Builder | None = None,
) -> ReadReport:
    """Read every record of ``path`` (JSONL, JSON document or Parquet; ``"-"`` is standard
    input) in ``format`` (``"auto"``: detected from the first readable record)."""
    if format != "auto" and format not in _BUILDERS:
        raise ValueError(f"unknown format {format!r}; choose auto or one of {', '.join(FORMATS)}")
    check_state_context(state_context)
    with InputSource(path) as source:
        format, raws = _open_records(source, format, progress)
        build = builder or _BUILDERS[format]
        collector = Collector(source.name, format, strict, default_agents=format != "episodes")
        for raw in raws:
            try:
                value = raw.parse()
            except DataError as error:
                collector.report.counts["records"] += 1
                collector.fail(error)
                continue
            for location, record in _expand(format, value, raw.location):
                collector.attempt(partial(build, record, location, state_context), location)
    return collector.finish()


def _expand(format: str, value: Any, location: Location) -> list[tuple[Location, Any]]:
    """A ChatGPT ``{"conversations": [...]}`` wrapper read as one record is its conversations."""
    if format == "chatgpt_export":
        items = conversations_of(value)
        if items is not None:
            return [(Location(location.path, location.line, i, "conversation"), item)
                    for i, item in enumerate(items)]
    return [(location, value)]


def load_episodes(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    strict: bool = True,
    state_context: str = "new",
    progress: bool = False,
) -> ReadReport:
    """Read any supported log file into episodes; ``format`` is detected by default, and
    ``"-"`` reads standard input (a pipe or FIFO is read once, like a file).

    The report holds the episodes, the skipped records (lenient mode) and a count of
    everything left out or transformed (``ReadReport.counts``, ``summary()``).
    """
    return read_records(path, format, strict=strict, state_context=state_context, progress=progress)


def write_episodes_jsonl(episodes: Iterable[Episode], path: str | os.PathLike[str]) -> int:
    """Write normalised episode JSONL whole or not at all (``agentfast.atomic_files``: a
    symbolic link's target is written, new files follow the umask); ``"-"`` is standard
    output. Returns the count."""
    count = 0
    with atomic_open(path) as handle:
        for episode in episodes:
            handle.write(json.dumps(episode.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


def check_output(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> None:
    """Refuse an output that is the input (by name, or through a symbolic or hard link) or a
    folder, before anything is read or written."""
    if same_file(input_path, output_path):
        linked = os.path.abspath(input_path) != os.path.abspath(output_path)
        raise FileError(f"this output is the input {input_path}{' (through a link)' if linked else ''}; "
                        "converting a file onto itself would overwrite the logs being read (and "
                        "drop skipped records for good): write to another file", path=output_path)
    if str(output_path) != "-" and os.path.isdir(output_path):
        raise FileAccessError("write", output_path, "it is a directory; name a file")


def convert(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    format: str = "auto",
    strict: bool = True,
    state_context: str = "new",
    progress: bool = False,
) -> ReadReport:
    """Read ``input_path`` in any supported format and write normalised episode JSONL; returns
    the read's report (print ``report.summary()``).

    ``"-"`` reads standard input or writes standard output. An output that is the input
    (through links too) is refused before anything is written, and a read that yields no
    episode (an empty export, every record bad) raises a ``DataError`` saying why and leaves
    the output untouched.
    """
    check_output(input_path, output_path)
    report = load_episodes(input_path, format=format, strict=strict, state_context=state_context,
                           progress=progress)
    report.require_episodes()
    write_episodes_jsonl(report.episodes, output_path)
    return report


# ------------------------------------------------------------------ one reader per format

def read_episodes_jsonl(
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    known_agents: Iterable[str | int] | None = None,
    known_options: Iterable[str] | None = None,
    progress: bool = False,
) -> ReadReport:
    """Read episode records (one per JSONL line, a JSON array, or Parquet rows)."""
    builder = lambda record, location, _: build_episode(record, location, known_agents, known_options)  # noqa: E731
    return read_records(path, "episodes", strict=strict, progress=progress, builder=builder)


def read_openai_chat_jsonl(path: str | os.PathLike[str], *, strict: bool = True,
                           state_context: str = "new", progress: bool = False) -> ReadReport:
    """Read OpenAI chat fine-tuning records; ``name`` on assistant messages tells agents apart."""
    return read_records(path, "openai_chat", strict=strict, state_context=state_context, progress=progress)


def read_openai_preference_jsonl(path: str | os.PathLike[str], *, strict: bool = True,
                                 state_context: str = "new", progress: bool = False) -> ReadReport:
    """Read OpenAI preference (DPO) records: two episodes each, the preferred one rewarded higher."""
    return read_records(path, "openai_preference", strict=strict, state_context=state_context,
                        progress=progress)


def read_sharegpt(path: str | os.PathLike[str], *, strict: bool = True,
                  state_context: str = "new", progress: bool = False) -> ReadReport:
    """Read ShareGPT records (JSONL, a JSON array or Parquet rows)."""
    return read_records(path, "sharegpt", strict=strict, state_context=state_context, progress=progress)


def read_chatgpt_export(path: str | os.PathLike[str], *, strict: bool = True,
                        state_context: str = "new", progress: bool = False) -> ReadReport:
    """Read a ChatGPT data export ``conversations.json`` (one episode per conversation)."""
    return read_records(path, "chatgpt_export", strict=strict, state_context=state_context,
                        progress=progress)
