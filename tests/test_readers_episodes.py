"""Episode records (agentfast's own format, agentfast/data/schema.py): JSONL, JSON arrays,
errors located by file, line and field."""

import json

import pytest

from agentfast.data import DataError, Episode, load_episodes, read_episodes_jsonl, write_episodes_jsonl
from tests.reader_records import EPISODE, EXAMPLES, write_lines


def test_good_file_with_blank_lines(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [json.dumps(EPISODE), "", json.dumps(EPISODE)])
    report = read_episodes_jsonl(path)
    assert len(report.episodes) == 2 and report.skipped == 0 and report.errors == []
    assert report.episodes[0].rewards == [0.0, 1.0]
    assert "read 2 episodes" in report.summary() and "no bad records" in report.summary()
    assert report.changes() == []


def test_strict_stops_at_first_error_with_location(tmp_path):
    bad_length = {**EPISODE, "actions": ["a0"]}
    path = write_lines(tmp_path / "e.jsonl", [json.dumps(EPISODE), json.dumps(bad_length), "{not json"])
    with pytest.raises(DataError) as caught:
        read_episodes_jsonl(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 2, "actions")


def test_lenient_skips_and_counts(tmp_path):
    lines = [json.dumps(EPISODE), "{not json", json.dumps({**EPISODE, "rewards": [0, None]}), json.dumps(EPISODE)]
    path = write_lines(tmp_path / "e.jsonl", lines)
    with pytest.warns(UserWarning, match="skipped 2 bad records"):
        report = read_episodes_jsonl(path, strict=False)
    assert len(report.episodes) == 2 and report.skipped == 2 and report.records == 4
    assert [(e.line, e.field) for e in report.errors] == [(2, None), (3, "rewards[1]")]
    assert "malformed JSON" in str(report.errors[0])


def test_huge_integers_are_field_or_line_errors_in_both_modes(tmp_path):
    huge_reward = '{"states": ["s"], "actions": ["a"], "rewards": [1%s]}' % ("0" * 400)
    too_many_digits = '{"states": ["s"], "actions": ["a"], "rewards": [%s]}' % ("9" * 5000)
    path = write_lines(tmp_path / "e.jsonl", [json.dumps(EPISODE), huge_reward, too_many_digits])
    with pytest.raises(DataError) as caught:
        read_episodes_jsonl(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 2, "rewards[0]")
    assert "must be finite" in str(caught.value)
    with pytest.warns(UserWarning, match="skipped 2 bad records"):
        report = read_episodes_jsonl(path, strict=False)
    assert len(report.episodes) == 1
    assert [(e.line, e.field) for e in report.errors] == [(2, "rewards[0]"), (3, None)]
    assert "5000 digits" in str(report.errors[1])


def test_write_then_read_round_trip(tmp_path):
    episodes = [Episode.from_dict({**EPISODE, "agent_ids": ["coder", "reviewer"], "options": ["o", "p"]})]
    assert write_episodes_jsonl(episodes, tmp_path / "out" / "x.jsonl") == 1
    assert read_episodes_jsonl(tmp_path / "out" / "x.jsonl").episodes == episodes
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_a_json_array_of_episodes_reads_like_jsonl_with_record_indices(tmp_path):
    """One JSON array of records is the same data as JSONL; errors name the record index."""
    array = tmp_path / "episodes.json"
    array.write_text(json.dumps([EPISODE, EPISODE], indent=2))
    jsonl = write_lines(tmp_path / "e.jsonl", [json.dumps(EPISODE)] * 2)
    assert load_episodes(array).episodes == load_episodes(jsonl).episodes
    array.write_text("[\n" + json.dumps(EPISODE) + ",\n" + json.dumps({"states": ["s"]}) + "\n]")
    with pytest.raises(DataError) as caught:
        load_episodes(array)
    assert (caught.value.line, caught.value.record, caught.value.field) == (3, "record 1", "actions")
    assert f"{array}:3 (record 1): field 'actions'" in str(caught.value)


def test_files_with_a_utf8_bom_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_text("\ufeff" + json.dumps(EPISODE) + "\n", encoding="utf-8")
    assert load_episodes(path).episodes == [Episode.from_dict(EPISODE)]
    array = tmp_path / "bom.json"
    array.write_text("\ufeff" + json.dumps([EPISODE]), encoding="utf-8")
    assert load_episodes(array).episodes == [Episode.from_dict(EPISODE)]


def test_non_utf8_bytes_are_errors_of_their_line(tmp_path):
    latin1 = json.dumps({**EPISODE, "states": ["café", "s1"]}, ensure_ascii=False).encode("latin-1")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(json.dumps(EPISODE).encode() + b"\n" + latin1 + b"\n")
    with pytest.raises(DataError) as caught:
        load_episodes(mixed)
    assert (caught.value.path, caught.value.line) == (str(mixed), 2) and "not UTF-8 text: byte 0xe9" in str(caught.value)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        report = load_episodes(mixed, strict=False)
    assert len(report.episodes) == 1 and report.skipped == 1


def test_bundled_examples_read_cleanly():
    report = load_episodes(EXAMPLES / "episodes.jsonl")
    assert len(report.episodes) >= 300 and report.skipped == 0 and report.changes() == []
    task_types = {e.task_type for e in report.episodes}
    assert {"debugging", "explain_concept", "write_tests", "refactor", "code_review", "data_analysis"} <= task_types
    assert any(e.agent_names and {"planner", "coder", "reviewer"} <= set(e.agent_names) for e in report.episodes)
    assert all(e.options is not None and e.rewards is not None for e in report.episodes)
