"""Local Parquet files (as data-set hubs ship them) holding any record format, one per row."""

import builtins
import json

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from agentfast.data import DataError, detect_format, load_episodes  # noqa: E402
from agentfast.data.readers import sources  # noqa: E402
from tests.reader_records import EPISODE, PREFERENCE, SHAREGPT, conversation, write_jsonl  # noqa: E402


def write_parquet(path, records, **kwargs):
    pq.write_table(pa.Table.from_pylist(records), path, **kwargs)
    return path


def without_empty_objects(value):
    """Parquet has no empty structs; hub files leave such fields out."""
    if isinstance(value, dict):
        return {k: without_empty_objects(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [without_empty_objects(v) for v in value]
    return value


# Parquet columns hold one type: message content as text, as hub chat data sets store it.
PARQUET_CHAT = {"messages": [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "The build fails."},
    {"role": "assistant", "name": "coder", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "run_tests", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "3 failed"},
    {"role": "assistant", "name": "coder", "content": "Fixed it.", "weight": 1}]}
PARQUET_PREFERENCE = without_empty_objects(PREFERENCE)


def write_conversations(path, conversations):
    """ChatGPT conversations with ``mapping`` as a Parquet map (its keys are node ids)."""
    rows = [without_empty_objects(c) for c in conversations]
    node_type = pa.array([n for r in rows for n in r["mapping"].values()]).type
    schema = pa.schema([("title", pa.string()), ("current_node", pa.string()),
                        ("mapping", pa.map_(pa.string(), node_type))])
    rows = [{**r, "mapping": list(r["mapping"].items())} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.mark.parametrize("fmt, record", [
    ("episodes", EPISODE), ("openai_chat", PARQUET_CHAT), ("openai_preference", PARQUET_PREFERENCE),
    ("sharegpt", SHAREGPT), ("chatgpt_export", conversation()),
])
def test_each_format_reads_from_parquet_like_jsonl(tmp_path, fmt, record):
    if fmt == "chatgpt_export":
        path = write_conversations(tmp_path / "data.parquet", [record] * 3)
    else:
        path = write_parquet(tmp_path / "data.parquet", [record] * 3)
    assert detect_format(path) == fmt
    from_parquet = load_episodes(path)
    from_jsonl = load_episodes(write_jsonl(tmp_path / "data.jsonl", [record] * 3))
    assert [(e.states, e.actions, e.rewards) for e in from_parquet.episodes] == \
        [(e.states, e.actions, e.rewards) for e in from_jsonl.episodes]
    assert from_parquet.episodes[0].metadata.get("source", "data.parquet:row 0").startswith("data.parquet:row 0")


def test_rows_are_read_in_batches_and_errors_name_the_row(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 2)
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = {"conversations": [{"from": "human", "value": "q"}, {"from": "alien", "value": "a"}]}
    path = write_parquet(tmp_path / "s.parquet", [good] * 5 + [bad] + [good], row_group_size=3)
    with pytest.raises(DataError) as caught:
        load_episodes(path)
    assert (caught.value.line, caught.value.record, caught.value.field) == (None, "row 5", "conversations[1].from")
    assert f"{path} (row 5): field 'conversations[1].from'" in str(caught.value)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        assert len(load_episodes(path, strict=False).episodes) == 6


def test_missing_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "e.parquet", [EPISODE])
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ImportError, match=r"pip install 'agentfast\[parquet\]'"):
        load_episodes(path)


def test_a_broken_parquet_file_is_a_data_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 20)
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_episodes(path)
    assert json.loads(json.dumps({"ok": 1}))  # the module's own JSON is unaffected
