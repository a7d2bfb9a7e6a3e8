"""Format detection, the one read loop every format shares, loading and conversion."""

from __future__ import annotations

import json
import os
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..schema import DataError, Episode
from .chat import check_state_context
from .chatgpt import build_conversation, conversations_of
from .openai import build_chat, build_preference
from .report import Built, Collector, ReadReport
from .sharegpt import build_sharegpt, is_sharegpt
from .sources import Location, looks_like_conversation, parquet_columns, records, sniff_container

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
    and counts it (lenient).
    """
    path = Path(path)
    container = sniff_container(path)
    if container == "parquet":
        columns = parquet_columns(path)
        found = format_of(dict.fromkeys(columns, [{"from": ""}] if "conversations" in columns else None))
        return found or "episodes"
    first_error: DataError | None = None
    seen = 0
    for raw in records(path, container):
        seen += 1
        try:
            found = format_of(raw.parse())
        except DataError as error:
            first_error = first_error or error
            found = None
        if found is not None:
            return found
        first_error = first_error or DataError("not a JSON object", path=str(path), line=raw.location.line)
        if seen >= DETECTION_RECORDS:
            break
    if first_error is None:
        raise DataError("cannot detect the format: the file is empty", path=str(path))
    where = f"line {first_error.line}" if first_error.line is not None else "the first record"
    raise DataError(
        f"cannot detect the format: no record is a JSON object (first problem: {where}: "
        f"{first_error.reason}); pass format= one of {', '.join(FORMATS)} (--format on the "
        "command line)", path=str(path), line=first_error.line,
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
    """Read every record of ``path`` (JSONL, JSON document or Parquet) in ``format``."""
    if format not in _BUILDERS:
        raise ValueError(f"unknown format {format!r}; choose auto or one of {', '.join(FORMATS)}")
    check_state_context(state_context)
    path = Path(path)
    build = builder or _BUILDERS[format]
    collector = Collector(str(path), format, strict, default_agents=format != "episodes")
    for raw in records(path, sniff_container(path), progress):
        try:
            value = raw.parse()
        except DataError as error:
            collector.report.counts["records"] += 1
            collector.fail(error)
            continue
        for location, record in _expand(format, value, raw.location):
            collector.attempt(partial(build, record, location, state_context))
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
    """Read any supported log file into episodes; ``format`` is detected by default.

    The report holds the episodes, the skipped records (lenient mode) and a count of
    everything left out or transformed (``ReadReport.counts``, ``summary()``).
    """
    fmt = detect_format(path) if format == "auto" else format
    return read_records(path, fmt, strict=strict, state_context=state_context, progress=progress)


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
    state_context: str = "new",
    progress: bool = False,
) -> ReadReport:
    """Read ``input_path`` in any supported format and write normalised episode JSONL; returns
    the read's report (print ``report.summary()``)."""
    report = load_episodes(input_path, format=format, strict=strict, state_context=state_context,
                           progress=progress)
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
