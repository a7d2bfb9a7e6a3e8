"""Hostile and unlucky inputs: streams read once, nesting too deep, half an emoji, cut-off
records, converting a file onto itself, links, and reads that give nothing."""

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agentfast.atomic_files import TEMP_SUFFIX
from agentfast.data import DataError, convert, load_episodes
from agentfast.errors import FileError
from tests.reader_records import CHAT, EPISODE, conversation, write_jsonl, write_lines

REPO = Path(__file__).resolve().parents[1]


def episode(i: int) -> dict:
    return {**EPISODE, "states": [f"state {i}", "s1"], "metadata": {"task_type": "t", "i": i}}


# ------------------------------------------------------------------ streams are read once

def _feed(write_end: int, data: bytes, unblock: str | None = None) -> threading.Thread:
    """Write ``data`` into a pipe from a thread (a pipe holds only 64 KiB)."""
    def run():
        try:
            with os.fdopen(write_end, "wb") as handle:
                handle.write(data)
        except BrokenPipeError:  # the reader stopped early (the test then fails on its own)
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _jsonl_bytes(count: int) -> bytes:
    return "".join(json.dumps(episode(i)) + "\n" for i in range(count)).encode()


def test_a_pipe_named_by_a_path_is_read_once(tmp_path):
    """``<(zcat logs.gz)`` hands over /dev/fd/N: detecting the format must not eat records."""
    read_end, write_end = os.pipe()
    thread = _feed(write_end, _jsonl_bytes(3000))
    try:
        report = load_episodes(f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)  # a writer still blocked on a full pipe gets EPIPE and ends
        thread.join()
    assert [e.metadata["i"] for e in report.episodes] == list(range(3000))


def test_a_fifo_is_read_once(tmp_path):
    fifo = tmp_path / "logs.fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def writer():
        with open(fifo, "wb") as handle:
            handle.write(_jsonl_bytes(500))
        # A reader that opened the FIFO a second time would wait for a writer forever:
        # give it an empty one, so the test fails instead of hanging.
        if not done.wait(20):
            open(fifo, "wb").close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        report = load_episodes(fifo)
    finally:
        done.set()
        thread.join()
    assert len(report.episodes) == 500 and report.path == str(fifo)


@pytest.mark.parametrize("container", ["jsonl", "array", "parquet"])
def test_standard_input_is_read_once_in_every_container(tmp_path, monkeypatch, container):
    records = [episode(i) for i in range(200)]
    if container == "jsonl":
        data = _jsonl_bytes(200)
    elif container == "array":
        data = json.dumps(records, indent=1).encode()
    else:
        pyarrow = pytest.importorskip("pyarrow")
        import pyarrow.parquet as parquet

        sink = io.BytesIO()
        parquet.write_table(pyarrow.Table.from_pylist(records), sink)
        data = sink.getvalue()
    read_end, write_end = os.pipe()
    thread = _feed(write_end, data)
    with os.fdopen(read_end, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        report = load_episodes("-")
    thread.join()
    assert [e.metadata["i"] for e in report.episodes] == list(range(200))
    assert report.path == "<stdin>" and report.format == "episodes"


def test_convert_from_standard_input_to_standard_output(tmp_path):
    """``agentfast convert - -`` in a pipeline: only episodes on stdout, the report on stderr."""
    chat = write_jsonl(tmp_path / "chat.jsonl", [CHAT, CHAT])
    result = subprocess.run([sys.executable, "-m", "agentfast", "convert", "-", "-"],
                            input=chat.read_bytes(), capture_output=True, cwd=REPO)
    assert result.returncode == 0, result.stderr.decode()
    expected = convert(chat, tmp_path / "out.jsonl")
    lines = result.stdout.decode().splitlines()
    written = [json.loads(line) for line in lines]
    assert [w["metadata"].pop("source") for w in written] == ["<stdin>:1", "<stdin>:2"]
    for e in expected.episodes:
        del e.metadata["source"]
    assert written == [e.to_dict() for e in expected.episodes]
    assert "read 2 episodes from <stdin> (openai_chat)" in result.stderr.decode()


# ------------------------------------------------------------------ nesting too deep

DEEP = 100_000


def _deep_episode_line() -> str:
    return '{"states": ["s"], "actions": ["a"], "metadata": {"x": ' + "[" * DEEP + "]" * DEEP + "}}"


def test_deeply_nested_json_is_an_error_of_its_line_and_lenient_reads_skip_it(tmp_path):
    path = write_lines(tmp_path / "deep.jsonl", [json.dumps(episode(0)), _deep_episode_line(),
                                                  json.dumps(episode(2))])
    with pytest.raises(DataError, match="nested too deeply") as caught:
        load_episodes(path)
    assert caught.value.path == str(path) and caught.value.line == 2
    report = load_episodes(path, strict=False)
    assert [e.metadata["i"] for e in report.episodes] == [0, 2] and report.skipped == 1
    assert report.errors[0].line == 2


def test_a_deeply_nested_first_line_does_not_stop_format_detection(tmp_path):
    path = write_lines(tmp_path / "deep.jsonl", [_deep_episode_line(), json.dumps(episode(1))])
    report = load_episodes(path, strict=False)
    assert report.format == "episodes" and len(report.episodes) == 1 and report.errors[0].line == 1


def test_deeply_nested_elements_of_a_json_document_are_skippable(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(f"[\n{json.dumps(episode(0))},\n{_deep_episode_line()},\n{json.dumps(episode(2))}\n]")
    with pytest.raises(DataError, match="nested too deeply") as caught:
        load_episodes(path)
    assert caught.value.line == 3 and caught.value.record == "record 1"
    report = load_episodes(path, strict=False)
    assert [e.metadata["i"] for e in report.episodes] == [0, 2]


# ------------------------------------------------------------------ half an emoji

def _chat_with(text_json: str) -> str:
    """A chat record whose user message is the raw JSON string ``text_json``."""
    return ('{"messages": [{"role": "user", "content": ' + text_json + '}, '
            '{"role": "assistant", "content": "ok"}]}')


def test_a_lone_surrogate_is_a_field_error_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", [_chat_with('"whole \\ud83d\\ude00"'),
                                                  _chat_with('"half \\ud83d"'),
                                                  _chat_with('"escaped backslash \\\\ud83d"')])
    with pytest.raises(DataError) as caught:
        load_episodes(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), 2, "messages[0].content")
    assert "lone surrogate \\ud83d" in str(error)
    report = load_episodes(path, strict=False)
    assert report.skipped == 1 and len(report.episodes) == 2
    assert report.episodes[0].states[0] == "user: whole \U0001F600"
    assert report.episodes[1].states[0] == "user: escaped backslash \\ud83d"
    out = tmp_path / "out.jsonl"
    convert(path, out, strict=False)  # what is left writes as UTF-8
    assert load_episodes(out).episodes == report.episodes


def test_a_lone_surrogate_in_a_key_of_a_json_document_is_skippable(tmp_path):
    bad = {**episode(1), "metadata": {"task_type": "t", "k\udc00": 1}}
    path = tmp_path / "e.json"
    path.write_text(json.dumps([episode(0), bad, episode(2)], indent=1))
    report = load_episodes(path, strict=False)
    assert [e.metadata["i"] for e in report.episodes] == [0, 2]
    assert report.errors[0].field == "metadata.k\\udc00" and report.errors[0].record == "record 1"


# ------------------------------------------------------------------ cut-off records

def test_a_cut_off_line_names_its_line_and_the_column_where_it_ends(tmp_path):
    cut = json.dumps(episode(1))[:30]
    path = write_lines(tmp_path / "cut.jsonl", [json.dumps(episode(0)), cut])
    with pytest.raises(DataError) as caught:
        load_episodes(path)
    end = len(cut.rstrip()) + 1
    assert (caught.value.line, caught.value.column) == (2, end)
    assert "cut off" in str(caught.value) and f"cut.jsonl:2:{end}:" in str(caught.value)


def test_a_malformed_line_names_the_column_of_the_problem(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(episode(0)), '{"states": ["a"] "actions": ["b"]}'])
    with pytest.raises(DataError, match="malformed JSON: Expecting ','") as caught:
        load_episodes(path)
    assert (caught.value.line, caught.value.column) == (2, 18)


def test_a_cut_off_json_document_names_where_it_ends(tmp_path):
    text = json.dumps([episode(0), episode(1)], indent=1)
    path = tmp_path / "cut.json"
    path.write_text(text[:-40])
    lines = text[:-40].splitlines()
    with pytest.raises(DataError, match="the file ends before the JSON value does") as caught:
        load_episodes(path, format="episodes")
    assert (caught.value.line, caught.value.column) == (len(lines), len(lines[-1].rstrip()) + 1)


def test_tool_calls_given_as_a_string_are_blamed_on_tool_calls(tmp_path):
    calls = [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]
    record = {"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": None, "tool_calls": json.dumps(calls)}]}
    with pytest.raises(DataError) as caught:
        load_episodes(write_jsonl(tmp_path / "c.jsonl", [record]))
    assert caught.value.field == "messages[1].tool_calls"
    assert "must be a list of tool calls, got a string" in str(caught.value)


# ------------------------------------------------------------------ outputs

@pytest.mark.parametrize("how", ["same path", "other spelling", "symlink", "hard link"])
def test_convert_onto_its_own_input_is_refused_before_anything_is_written(tmp_path, how):
    original = tmp_path / "logs.jsonl"
    lines = [json.dumps(CHAT), "{not json", json.dumps(CHAT)]
    write_lines(original, lines)
    before = original.read_bytes()
    output = {"same path": original, "other spelling": tmp_path / "sub" / ".." / "logs.jsonl",
              "symlink": tmp_path / "link.jsonl", "hard link": tmp_path / "hard.jsonl"}[how]
    if how == "symlink":
        output.symlink_to(original)
    elif how == "hard link":
        os.link(original, output)
    for strict in (True, False):  # lenient would drop the bad line for good
        with pytest.raises(FileError, match="this output is the input"):
            convert(original, output, strict=strict)
    assert original.read_bytes() == before and list(tmp_path.glob(f".*{TEMP_SUFFIX}")) == []
    (tmp_path / "sub").mkdir()
    from agentfast.cli import main

    assert main(["convert", str(original), str(output), "--lenient"]) == 2
    assert original.read_bytes() == before


def test_convert_writes_through_a_symlinked_output(tmp_path):
    target = tmp_path / "data" / "episodes.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "episodes.jsonl"
    link.symlink_to(target)
    report = convert(write_jsonl(tmp_path / "chat.jsonl", [CHAT]), link)
    assert link.is_symlink() and load_episodes(target).episodes == report.episodes


def test_convert_into_a_directory_fails_before_reading(tmp_path):
    with pytest.raises(FileError, match="it is a directory"):
        convert(tmp_path / "missing.jsonl", tmp_path)


# ------------------------------------------------------------------ reads that give nothing

@pytest.mark.parametrize("case", ["empty export", "all bad", "no replies"])
def test_a_read_without_episodes_fails_saying_why_and_writes_nothing(tmp_path, capsys, case):
    if case == "empty export":
        path = tmp_path / "conversations.json"
        path.write_text("[]")
        kwargs, why = {"format": "chatgpt_export"}, "it holds no records"
    elif case == "all bad":
        path = write_lines(tmp_path / "bad.jsonl", ['{"states": []}', '{"states": 3}'])
        kwargs, why = {"format": "episodes", "strict": False}, "every one of its 2 records is bad (first: "
    else:
        unanswered = conversation()
        unanswered["mapping"] = {k: v for k, v in unanswered["mapping"].items()
                                 if (v.get("message") or {}).get("author", {}).get("role") != "assistant"}
        for item in unanswered["mapping"].values():
            item["children"] = [c for c in item.get("children", []) if c in unanswered["mapping"]]
        unanswered["current_node"] = next(k for k, v in unanswered["mapping"].items() if not v["children"])
        path = tmp_path / "conversations.json"
        path.write_text(json.dumps([unanswered]))
        kwargs, why = {}, "none of its 1 record gave an episode: skipped 1 conversation with no assistant reply"
    output = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match="no episodes: ") as caught:
        convert(path, output, **kwargs)
    assert why in str(caught.value) and not output.exists()
    from agentfast.cli import main

    argv = ["convert", str(path), str(output)] + (["--lenient"] if case == "all bad" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and not output.exists()
