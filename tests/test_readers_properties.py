"""Property tests: random valid records of every format convert and round-trip through episode
JSONL; random corruptions anywhere in a record either still convert or raise a DataError
naming the file and the record's line; nothing raises anything else."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentfast.data import DataError, convert, load_episodes

pytestmark = pytest.mark.filterwarnings("ignore::agentfast.data.SkippedRecordsWarning")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
names = st.sampled_from(["planner", "coder", "reviewer"])
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False), text)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(text, inner, max_size=3)),
                          max_leaves=6)


@st.composite
def episodes(draw):
    steps = draw(st.integers(1, 4))
    record = {"states": draw(st.lists(text, min_size=steps, max_size=steps)),
              "actions": draw(st.lists(text, min_size=steps, max_size=steps))}
    if draw(st.booleans()):
        record["rewards"] = draw(st.lists(st.floats(-10, 10), min_size=steps, max_size=steps))
    if draw(st.booleans()):
        record["agent_ids"] = draw(st.lists(names, min_size=steps, max_size=steps))
    record["metadata"] = {"task_type": draw(text)}
    return record


@st.composite
def chat_messages(draw, allow_weight=True):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(text)})
    for turn in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(st.one_of(
            text, st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), min_size=1, max_size=2)))})
        assistant = {"role": "assistant", "content": draw(text) or "ok"}
        if draw(st.booleans()):
            assistant["name"] = draw(names)
        if allow_weight and turn > 0 and draw(st.booleans()):
            assistant["weight"] = draw(st.sampled_from([0, 1]))
        if draw(st.booleans()):
            call_id = f"call{turn}"
            assistant["tool_calls"] = [{"id": call_id, "type": "function",
                                        "function": {"name": draw(names), "arguments": "{}"}}]
            messages.append(assistant)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": draw(text)})
            messages.append({"role": "assistant", "content": draw(text) or "done"})
        else:
            messages.append(assistant)
    return messages


chats = st.builds(lambda m: {"messages": m}, chat_messages())
preferences = st.builds(
    lambda m, a, b: {"input": {"messages": m}, "preferred_output": [{"role": "assistant", "content": a or "a"}],
                     "non_preferred_output": [{"role": "assistant", "content": b or "b"}]},
    chat_messages(allow_weight=False), text, text)


@st.composite
def sharegpt(draw):
    turns = []
    for _ in range(draw(st.integers(1, 3))):
        turns.append({"from": "human", "value": draw(text)})
        if draw(st.booleans()):
            turns.append({"from": "function_call", "value": json.dumps({"name": draw(names), "arguments": {}})})
            turns.append({"from": "observation", "value": draw(text)})
        turns.append({"from": "gpt", "value": draw(text)})
    record = {"conversations": turns}
    if draw(st.booleans()):
        record["system"] = draw(text)
    return record


@st.composite
def conversations(draw):
    mapping = {"root": {"id": "root", "message": None, "parent": None, "children": []}}
    parent = "root"
    for i in range(draw(st.integers(1, 3))):
        for role in ("user", "assistant"):
            node_id = f"{role}{i}"
            content = {"content_type": "text", "parts": [draw(text) or role]}
            mapping[node_id] = {"id": node_id, "parent": parent, "children": [], "message": {
                "id": node_id, "author": {"role": role}, "content": content, "recipient": "all",
                "metadata": {"is_visually_hidden_from_conversation": draw(st.booleans())} if role == "user" else {}}}
            mapping[parent]["children"].append(node_id)
            parent = node_id
    return {"title": draw(text), "mapping": mapping, "current_node": parent}


FORMATS = {"episodes": episodes(), "openai_chat": chats, "openai_preference": preferences,
           "sharegpt": sharegpt(), "chatgpt_export": conversations()}


def write(records, name):
    folder = Path(tempfile.mkdtemp())
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder, path


@st.composite
def format_and_records(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    return fmt, draw(st.lists(FORMATS[fmt], min_size=1, max_size=3))


@SETTINGS
@given(format_and_records())
def test_valid_records_convert_and_round_trip(case):
    fmt, records = case
    folder, path = write(records, "in.jsonl")
    try:
        report = convert(path, folder / "out.jsonl", format=fmt)
    except DataError as error:
        # the only valid record a converter may refuse: a chat with no visible reply
        assert "no assistant message" in str(error) or "weight 0" in str(error), error
        return
    assert report.skipped == 0
    assert load_episodes(folder / "out.jsonl", format="episodes").episodes == report.episodes
    per_record = {"openai_preference": 2}.get(fmt, 1)
    skipped = report.counts["conversations_without_reply"]
    assert len(report.episodes) == per_record * (len(records) - skipped)


def paths(value, prefix=()):
    """Every path to a value inside a JSON tree."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


@st.composite
def corrupted(draw):
    fmt, records = draw(format_and_records())
    index = draw(st.integers(0, len(records) - 1))
    targets = list(paths(records[index]))
    path = draw(st.sampled_from(targets))
    records[index] = replaced(records[index], path, draw(json_value))
    return fmt, records, index


@SETTINGS
@given(corrupted())
def test_corrupted_records_convert_or_raise_a_located_data_error(case):
    fmt, records, index = case
    folder, path = write(records, "in.jsonl")
    try:
        report = load_episodes(path, format=fmt)
    except DataError as error:
        assert error.path == str(path) and error.line is not None and 1 <= error.line <= len(records)
        assert str(error).startswith(f"{path}:{error.line}")
        lenient = load_episodes(path, format=fmt, strict=False)
        assert lenient.skipped >= 1  # (a line holding an array reads as a JSON document of records)
        return
    write_path = folder / "out.jsonl"
    convert(path, write_path, format=fmt)
    assert load_episodes(write_path, format="episodes").episodes == report.episodes


@SETTINGS
@given(format_and_records(), st.sampled_from(["messages", "conversations", "mapping", "states", "input"]),
       st.sampled_from([3, "text", True]))
def test_a_wrong_type_in_a_required_field_is_a_field_error(case, key, wrong):
    fmt, records = case
    required = {"episodes": "states", "openai_chat": "messages", "openai_preference": "input",
                "sharegpt": "conversations", "chatgpt_export": "mapping"}[fmt]
    records[-1] = {**records[-1], required: wrong}
    folder, path = write(records, "in.jsonl")
    try:
        load_episodes(path, format=fmt)
    except DataError as error:
        assert (error.path, error.line, error.field) == (str(path), len(records), required)
    else:
        raise AssertionError(f"{required}={wrong!r} was accepted")
