"""Readers that turn agent logs into validated episodes, and a writer for episode JSONL.

Record formats (``FORMATS``), each read from JSONL, from one JSON document (an array of
records; ChatGPT's ``{"conversations": [...]}`` wrapper and single objects too) or from
local Parquet rows (``pip install agentfast[parquet]``):

* ``episodes``: agentfast's own episode records, one per line (the schema in ``schema.py``; README, "Data formats");
* ``openai_chat``: OpenAI chat fine-tuning records (``openai.py``);
* ``openai_preference``: OpenAI preference (DPO) records, two episodes each (``openai.py``);
* ``sharegpt``: ShareGPT ``conversations`` of from/value turns (``sharegpt.py``);
* ``chatgpt_export``: ChatGPT's ``conversations.json`` export (``chatgpt.py``).

``detect_format`` tells them apart by the first record's keys. In strict mode (the default)
the first bad record raises a ``DataError`` naming file, line (or record index) and field;
in lenient mode bad records are skipped and counted. Every read returns a ``ReadReport``
that counts, per kind, everything left out or transformed.
"""

from .chat import NO_NEW_INPUT
from .core import (
    FORMATS,
    convert,
    detect_format,
    load_episodes,
    read_chatgpt_export,
    read_episodes_jsonl,
    read_openai_chat_jsonl,
    read_openai_preference_jsonl,
    read_records,
    read_sharegpt,
    write_episodes_jsonl,
)
from .report import DEFAULT_AGENT, KINDS, ReadReport, SkippedRecordsWarning

__all__ = [
    "DEFAULT_AGENT",
    "FORMATS",
    "KINDS",
    "NO_NEW_INPUT",
    "ReadReport",
    "SkippedRecordsWarning",
    "convert",
    "detect_format",
    "load_episodes",
    "read_chatgpt_export",
    "read_episodes_jsonl",
    "read_openai_chat_jsonl",
    "read_openai_preference_jsonl",
    "read_records",
    "read_sharegpt",
    "write_episodes_jsonl",
]
