"""Small hand-written records in each public log format, for the reader tests."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"

EPISODE = {"states": ["s0", "s1"], "actions": ["a0", "a1"], "rewards": [0, 1], "metadata": {"task_type": "t"}}

CHAT = {
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "The build fails."},
        {"role": "assistant", "name": "planner", "content": "Let me look."},
        {"role": "assistant", "name": "coder", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "run_tests", "arguments": "{\"path\": \"tests\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3 failed"},
        {"role": "user", "content": [{"type": "text", "text": "Any luck?"}]},
        {"role": "assistant", "name": "coder", "content": "Fixed it."},
    ],
    "metadata": {"task_type": "debugging"},
}

PREFERENCE = {
    "input": {
        "messages": [{"role": "user", "content": "How cold is San Francisco today?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
        "parallel_tool_calls": True,
    },
    "preferred_output": [{"role": "assistant", "content": "It is 14 degrees C in San Francisco."}],
    "non_preferred_output": [{"role": "assistant", "content": "It is cold."}],
}

SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
        {"from": "observation", "value": "{\"temperature\": 20}"},
        {"from": "gpt", "value": "It is 20 degrees in Paris."},
    ],
    "system": "You are a weather bot.",
    "tools": "[{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}]",
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def node(node_id, parent, role=None, text="", children=(), recipient="all", name=None,
         content=None, metadata=None):
    """A ChatGPT export mapping node holding one message (or none for the root)."""
    message = None
    if role is not None:
        message = {"id": node_id, "author": {"role": role, "name": name, "metadata": {}},
                   "content": content or {"content_type": "text", "parts": [text]},
                   "status": "finished_successfully", "recipient": recipient,
                   "metadata": metadata or {}}
    return {"id": node_id, "message": message, "parent": parent, "children": list(children)}


def conversation(current="a2"):
    mapping = {
        "root": node("root", None, children=["u1"]),
        "u1": node("u1", "root", "user", "Why is it slow?", ["a1"]),
        "a1": node("a1", "u1", "assistant", "print(profile())", ["t1"], recipient="python"),
        "t1": node("t1", "a1", "tool", "90% in parse()", ["a2", "a2b"], name="python"),
        "a2": node("a2", "t1", "assistant", "parse() dominates; cache it."),
        "a2b": node("a2b", "t1", "assistant", "An abandoned regenerated answer."),
    }
    return {"title": "slow", "mapping": mapping, "current_node": current}


def linear_conversation(*nodes, current=None, title="t"):
    """A conversation whose nodes follow each other in the order given (root first)."""
    mapping = {}
    parent = None
    for item in nodes:
        item = dict(item, parent=parent, children=[])
        if parent is not None:
            mapping[parent]["children"].append(item["id"])
        mapping[item["id"]] = item
        parent = item["id"]
    return {"title": title, "mapping": mapping, "current_node": parent if current is None else current}
