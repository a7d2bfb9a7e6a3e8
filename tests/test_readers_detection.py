"""Format and container detection, the streaming JSON document reader, and the report."""

import json

import pytest

from agentfast.data import FORMATS, DataError, convert, detect_format, load_episodes
from agentfast.data.readers.sources import JsonStream, json_document_records, sniff_container
from tests.reader_records import CHAT, EPISODE, PREFERENCE, SHAREGPT, conversation, write_jsonl, write_lines

RECORDS = {"episodes": EPISODE, "openai_chat": CHAT, "openai_preference": PREFERENCE,
           "sharegpt": SHAREGPT, "chatgpt_export": conversation()}


def test_formats_are_the_documented_ones():
    assert set(FORMATS) == set(RECORDS)


@pytest.mark.parametrize("fmt", RECORDS)
@pytest.mark.parametrize("container", ["jsonl", "array", "pretty-array"])
def test_every_format_is_detected_in_every_text_container(tmp_path, fmt, container):
    record = RECORDS[fmt]
    if container == "jsonl":
        path = write_jsonl(tmp_path / "x.jsonl", [record, record])
    else:
        path = tmp_path / "x.json"
        path.write_text(json.dumps([record, record], indent=2 if container == "pretty-array" else None))
    assert sniff_container(path) == ("jsonl" if container == "jsonl" else "json")
    assert detect_format(path) == fmt
    report = load_episodes(path)
    assert report.format == fmt and report.skipped == 0 and len(report.episodes) >= 2
    out = tmp_path / "out.jsonl"
    assert convert(path, out).episodes == load_episodes(out).episodes


def test_a_malformed_first_line_is_passed_over(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ["{not json", json.dumps(CHAT)])
    assert detect_format(path) == "openai_chat"
    with pytest.raises(DataError) as caught:  # strict: the reader names the bad line
        load_episodes(path)
    assert caught.value.line == 1 and "malformed JSON" in str(caught.value)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        report = load_episodes(path, strict=False)
    assert report.format == "openai_chat" and len(report.episodes) == 1 and report.skipped == 1


def test_no_json_object_names_the_first_bad_line_and_the_formats(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["", "{not json", "3"])
    with pytest.raises(DataError) as caught:
        detect_format(path)
    message = str(caught.value)
    assert caught.value.path == str(path) and caught.value.line == 2
    assert "line 2: malformed JSON" in message
    assert f"pass format= one of {', '.join(FORMATS)} (--format on the command line)" in message


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_file_says_it_is_empty(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="the file is empty") as caught:
        load_episodes(path)
    assert caught.value.path == str(path)


def test_a_long_first_line_is_still_jsonl(tmp_path):
    long_state = "x" * 70_000
    path = write_jsonl(tmp_path / "long.jsonl", [{**EPISODE, "states": [long_state, "s1"]}, EPISODE])
    assert sniff_container(path) == "jsonl" and load_episodes(path).episodes[0].states[0] == long_state


def test_unknown_format_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        load_episodes(write_jsonl(tmp_path / "c.jsonl", [CHAT]), format="xml")


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_the_json_stream_reads_any_chunking_and_counts_lines(tmp_path, chunk):
    """Elements cut anywhere by the chunk size (inside strings, escapes, multi-byte
    characters) decode the same, each with its start line."""
    items = [{"a": "caf\u00e9 \\\" [{", "b": [1, 2, {"c": None}]}, "str\u2603", 3.5, [], {}]
    text = "[\n" + ",\n\n".join(json.dumps(item, ensure_ascii=False) for item in items) + "\n]\n"
    path = tmp_path / "doc.json"
    path.write_text(text, encoding="utf-8")
    stream = JsonStream(path, chunk_bytes=chunk)
    got = [(location.line, value) for location, value, bad in stream.elements()]
    stream.close()
    assert [value for _, value in got] == items
    assert [line for line, _ in got] == [2, 4, 6, 8, 10]


def test_the_json_stream_keeps_memory_to_one_element_and_a_chunk(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"text": "y" * 1000, "i": i} for i in range(2000)]))
    stream = JsonStream(path, chunk_bytes=4096)
    largest = 0
    for _, value, _ in stream.elements():
        largest = max(largest, len(stream.buffer))
    stream.close()
    assert largest < 3 * 4096 + 2000  # never the whole 2 MB file


def test_a_bad_byte_past_the_first_element_is_an_error_of_its_line(tmp_path):
    first = {**conversation(), "title": "caf\u00e9 " * 50}
    path = tmp_path / "conversations.json"
    path.write_bytes(b"[" + json.dumps(first, ensure_ascii=False).encode() + b",\n" + b" " * 300_000
                     + b"\n\xff]")
    assert detect_format(path) == "chatgpt_export"
    with pytest.raises(DataError, match="not UTF-8 text: byte 0xff") as caught:
        load_episodes(path)
    assert caught.value.line == 3
    records = list(json_document_records(path))
    assert records[0].parse() == first  # the good element before it reads


def test_unnamed_chat_records_in_a_named_data_set_get_their_own_agent(tmp_path):
    named = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "name": "coder", "content": "a"}]}
    unnamed = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    report = load_episodes(write_jsonl(tmp_path / "c.jsonl", [named, unnamed]))
    assert report.episodes[1].agent_labels() == ["assistant"]
    assert "gave 1 episode without agent names the agent 'assistant'" in report.summary()
    # Episode records state their agents themselves: one without agent_ids stays agent 0.
    episodes = load_episodes(write_jsonl(tmp_path / "e.jsonl", [{**EPISODE, "agent_ids": ["a", "b"]}, EPISODE]))
    assert episodes.episodes[1].agent_ids is None and episodes.counts["default_agent_episodes"] == 0


def test_convert_help_lists_every_format_with_an_example(capsys):
    from agentfast.cli import CONVERT_FORMATS, main

    assert CONVERT_FORMATS == FORMATS
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    for fmt in FORMATS:
        assert f"\n  {fmt} " in out  # an example line for each


def test_the_cli_prints_and_logs_the_report(tmp_path, capsys):
    from agentfast.cli import main

    hidden = {"is_visually_hidden_from_conversation": True}
    conv = conversation()
    conv["mapping"]["u1"]["message"]["metadata"] = hidden  # the request is hidden: its reply is unprompted
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([conv]))
    log = tmp_path / "log.jsonl"
    assert main(["convert", str(path), str(tmp_path / "out.jsonl"), "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "left out 1 message the ChatGPT UI hides" in out
    record = json.loads(log.read_text())
    assert record["hidden_messages"] == 1 and record["episodes"] == 1 and record["skipped"] == 0
