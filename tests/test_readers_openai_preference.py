"""OpenAI preference (DPO) records: two episodes per line, the preferred one rewarded higher."""

import json

import pytest

from agentfast.data import (
    DataError,
    detect_format,
    discounted_returns,
    read_openai_preference_jsonl,
    write_episodes_jsonl,
    load_episodes,
)
from tests.reader_records import PREFERENCE, write_jsonl, write_lines


def test_each_record_becomes_a_preferred_and_a_non_preferred_episode(tmp_path):
    path = write_jsonl(tmp_path / "dpo.jsonl", [PREFERENCE])
    assert detect_format(path) == "openai_preference"
    report = read_openai_preference_jsonl(path)
    preferred, other = report.episodes
    assert preferred.states == other.states == ["user: How cold is San Francisco today?"]
    assert preferred.actions == ["It is 14 degrees C in San Francisco."]
    assert other.actions == ["It is cold."]
    assert (preferred.metadata["preference"], other.metadata["preference"]) == ("preferred", "non_preferred")
    assert preferred.metadata["success"] is True and other.metadata["success"] is False
    assert preferred.metadata["preference_pair"] == other.metadata["preference_pair"] == "line 1"
    assert preferred.metadata["tools"] == PREFERENCE["input"]["tools"]
    assert report.counts["preference_pairs"] == 1


def test_returns_are_ordered_at_every_step(tmp_path):
    """Multi-step outputs (a tool call, its result, an answer): the preferred return-to-go is
    higher than the non-preferred one at every step."""
    record = {
        "input": {"messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Weather in Oslo?"},
                               {"role": "assistant", "content": "Checking.", "weight": 1},
                               {"role": "user", "content": "Go on."}]},
        "preferred_output": [
            {"role": "assistant", "tool_calls": [{"id": "w", "type": "function",
                                                  "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "w", "content": "-3C"},
            {"role": "assistant", "content": "-3 degrees C."}],
        "non_preferred_output": [{"role": "assistant", "content": "Sunny."}],
    }
    report = read_openai_preference_jsonl(write_jsonl(tmp_path / "dpo.jsonl", [record]))
    preferred, other = report.episodes
    # The input's assistant turn is prompt context, not a compared action.
    assert preferred.states[0] == "system: Be brief.\nuser: Weather in Oslo?\nassistant: Checking.\nuser: Go on."
    assert preferred.states[1] == "tool (weather): -3C" and len(preferred) == 2 and len(other) == 1
    assert report.counts["prompt_assistant_messages"] == 1
    good = discounted_returns(preferred.rewards, 0.99)
    bad = discounted_returns(other.rewards, 0.99)
    assert min(good.tolist()) > max(bad.tolist())


def test_round_trip_through_episode_jsonl(tmp_path):
    report = read_openai_preference_jsonl(write_jsonl(tmp_path / "dpo.jsonl", [PREFERENCE, PREFERENCE]))
    write_episodes_jsonl(report.episodes, tmp_path / "out.jsonl")
    assert load_episodes(tmp_path / "out.jsonl").episodes == report.episodes


@pytest.mark.parametrize("change, field", [
    (lambda r: r.pop("input"), "input"),
    (lambda r: r["input"].update(messages="hi"), "input.messages"),
    (lambda r: r.update(preferred_output={"role": "assistant", "content": "x"}), "preferred_output"),
    (lambda r: r.update(non_preferred_output=[{"role": "user", "content": "x"}]), "non_preferred_output[0].role"),
    (lambda r: r.update(non_preferred_output=[]), "non_preferred_output"),
    (lambda r: r["input"].update(parallel_tool_calls="yes"), "input.parallel_tool_calls"),
])
def test_malformed_records_are_field_errors(tmp_path, change, field):
    broken = json.loads(json.dumps(PREFERENCE))
    change(broken)
    path = write_lines(tmp_path / "dpo.jsonl", [json.dumps(PREFERENCE), json.dumps(broken)])
    with pytest.raises(DataError) as caught:
        read_openai_preference_jsonl(path)
    assert (caught.value.line, caught.value.field) == (2, field)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        report = read_openai_preference_jsonl(path, strict=False)
    assert len(report.episodes) == 2
