"""ShareGPT records (LLaMA-Factory's documented format), as JSONL and as one JSON array."""

import json

import pytest

from agentfast.data import DataError, detect_format, load_episodes, read_sharegpt
from tests.reader_records import SHAREGPT, write_jsonl, write_lines


def test_turns_become_steps_with_tools_and_system_kept(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [SHAREGPT])
    assert detect_format(path) == "sharegpt"
    (episode,) = read_sharegpt(path).episodes
    assert episode.actions == ['[tool call] get_weather({"city": "Paris"})', "It is 20 degrees in Paris."]
    assert episode.states == ["system: You are a weather bot.\nuser: What is the weather in Paris?",
                              'tool (get_weather): {"temperature": 20}']
    assert episode.metadata["tools"] == [{"name": "get_weather", "parameters": {"type": "object"}}]


def test_a_json_array_reads_like_jsonl(tmp_path):
    other = {"conversations": [{"from": "system", "value": "Sys."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}], "id": "x7"}
    array = tmp_path / "data.json"
    array.write_text(json.dumps([SHAREGPT, other], indent=2))
    assert detect_format(array) == "sharegpt"
    from_array = load_episodes(array).episodes
    from_jsonl = load_episodes(write_jsonl(tmp_path / "s.jsonl", [SHAREGPT, other])).episodes
    assert [(e.states, e.actions) for e in from_array] == [(e.states, e.actions) for e in from_jsonl]
    assert from_array[1].states == ["system: Sys.\nuser: Hi"] and from_array[1].metadata["id"] == "x7"


def test_openai_style_tags_and_preference_pairs(tmp_path):
    record = {"conversations": [{"role": "user", "content": "Pick a name."}],
              "chosen": {"from": "gpt", "value": "Ada."}, "rejected": {"from": "gpt", "value": "x"}}
    preferred, other = read_sharegpt(write_jsonl(tmp_path / "p.jsonl", [record])).episodes
    assert preferred.actions == ["Ada."] and other.actions == ["x"]
    assert preferred.rewards[-1] > other.rewards[-1] and preferred.metadata["preference"] == "preferred"


def test_media_lists_are_kept_and_counted(tmp_path):
    record = {"conversations": [{"from": "human", "value": "<image>What is this?"},
                                {"from": "gpt", "value": "A cat."}], "images": ["cat.jpg"]}
    report = read_sharegpt(write_jsonl(tmp_path / "m.jsonl", [record]))
    assert report.episodes[0].metadata["images"] == ["cat.jpg"] and report.counts["media_parts"] == 1


@pytest.mark.parametrize("record, field", [
    ({"conversations": "hi"}, "conversations"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "conversations[0].from"),
    ({"conversations": [{"from": "human", "value": ["x"]}]}, "conversations[0].value"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}], "system": 3}, "system"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}], "tools": 3}, "tools"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "messages"),
])
def test_malformed_records_are_field_errors(tmp_path, record, field):
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(SHAREGPT), json.dumps(record)])
    with pytest.raises(DataError) as caught:
        read_sharegpt(path)
    assert (caught.value.line, caught.value.field) == (2, field)
    array = tmp_path / "s.json"
    array.write_text(json.dumps([SHAREGPT, record]))
    with pytest.raises(DataError) as caught:
        read_sharegpt(array)
    assert (caught.value.record, caught.value.field) == ("record 1", field)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        assert len(read_sharegpt(array, strict=False).episodes) == 1
