import math

import pytest

from agentfast.data import DataError, Episode, EpisodeValidationError


def record(**overrides):
    base = {
        "states": ["s0", "s1", "s2"],
        "actions": ["a0", "a1", "a2"],
        "rewards": [0, 0.5, 1],
        "agent_ids": ["planner", "coder", "planner"],
        "options": ["plan", "implement", "plan"],
        "metadata": {"task_type": "debugging"},
    }
    base.update(overrides)
    return base


def test_valid_record_normalises_agent_names_and_round_trips():
    episode = Episode.from_dict(record(), source="logs.jsonl:7")
    assert episode.agent_ids == [0, 1, 0]
    assert episode.agent_names == ["planner", "coder"]
    assert episode.agent_labels() == ["planner", "coder", "planner"]
    assert episode.rewards == [0.0, 0.5, 1.0]
    assert episode.task_type == "debugging"
    assert Episode.from_dict(episode.to_dict()) == episode


def test_integer_agents_keep_their_ids_and_optional_fields_may_be_absent():
    episode = Episode.from_dict({"states": ["s"], "actions": ["a"], "agent_ids": [3]})
    assert episode.agent_ids == [3] and episode.agent_names is None
    assert episode.rewards is None and episode.options is None and episode.metadata == {}
    assert episode.task_type == "unknown"
    assert episode.to_dict()["agent_ids"] == [3]


@pytest.mark.parametrize(
    "overrides, field, phrase",
    [
        ({"actions": ["a0", "a1"]}, "actions", "has 2 entries but states has 3"),
        ({"rewards": [0, 1]}, "rewards", "has 2 entries"),
        ({"agent_ids": [0, 1]}, "agent_ids", "has 2 entries"),
        ({"options": ["plan"]}, "options", "has 1 entries"),
        ({"states": ["s0", 5, "s2"]}, "states[1]", "must be a string"),
        ({"actions": "a0"}, "actions", "must be a list"),
        ({"rewards": [0, float("nan"), 1]}, "rewards[1]", "must be finite"),
        ({"rewards": [0, float("inf"), 1]}, "rewards[1]", "must be finite"),
        ({"rewards": [0, True, 1]}, "rewards[1]", "must be a number"),
        ({"rewards": [0, 10**400, 1]}, "rewards[1]", "must be finite, got an integer too large for a float"),
        ({"rewards": [0, -(10**400), 1]}, "rewards[1]", "must be finite, got an integer too large for a float"),
        ({"rewards": [0, "1", 1]}, "rewards[1]", "must be a number"),
        ({"states": [], "actions": [], "rewards": [], "agent_ids": [], "options": []}, "states", "empty episode"),
        ({"agent_ids": [0, -1, 0]}, "agent_ids[1]", ">= 0"),
        ({"agent_ids": [0, 64, 0]}, "agent_ids[1]", "must be < 64, got 64: agent ids lie in [0, 64)"),
        ({"agent_ids": [0, 50000, 0]}, "agent_ids[1]", "must be < 64, got 50000"),
        ({"agent_ids": [0, "coder", 0]}, "agent_ids[1]", "mixes integer ids and role names"),
        ({"agent_ids": [0, 1.5, 0]}, "agent_ids[1]", "integer or a role name"),
        ({"metadata": ["x"]}, "metadata", "must be an object"),
        ({"metadata": {"task_type": 3}}, "metadata.task_type", "must be a string"),
        ({"extra": 1}, "extra", "unknown key"),
    ],
)
def test_bad_records_name_file_line_and_field(overrides, field, phrase):
    with pytest.raises(EpisodeValidationError) as caught:
        Episode.from_dict(record(**overrides), source="data/logs.jsonl:12")
    error = caught.value
    assert (error.path, error.line, error.field) == ("data/logs.jsonl", 12, field)
    assert phrase in str(error)
    assert str(error).startswith(f"data/logs.jsonl:12: field '{field}'")
    assert isinstance(error, DataError)


def test_missing_required_field():
    with pytest.raises(EpisodeValidationError) as caught:
        Episode.from_dict({"states": ["s"]}, source="f.jsonl:1")
    assert caught.value.field == "actions"


def test_non_object_record():
    with pytest.raises(EpisodeValidationError, match="must be a JSON object"):
        Episode.from_dict([1, 2], source="f.jsonl:3")


def test_unknown_labels_against_declared_and_given_sets():
    declared = record(metadata={"agent_names": ["planner", "coder"], "option_names": ["plan"]})
    with pytest.raises(EpisodeValidationError) as caught:
        Episode.from_dict(declared, source="f.jsonl:2")
    assert caught.value.field == "options[1]" and "unknown option 'implement'" in str(caught.value)

    with pytest.raises(EpisodeValidationError) as caught:
        Episode.from_dict(record(), source="f.jsonl:2", known_agents=["planner"])
    assert caught.value.field == "agent_ids[1]" and "unknown agent 'coder'" in str(caught.value)


def test_nan_from_json_text_is_rejected():
    import json

    parsed = json.loads('{"states": ["s"], "actions": ["a"], "rewards": [NaN]}')
    assert math.isnan(parsed["rewards"][0])
    with pytest.raises(EpisodeValidationError, match="finite"):
        Episode.from_dict(parsed)


def test_at_most_64_agents_per_episode():
    steps = [f"s{i}" for i in range(65)]
    numbered = Episode.from_dict({"states": steps[:2], "actions": steps[:2], "agent_ids": [63, 0]})
    assert numbered.agent_ids == [63, 0]
    names = [f"agent{i}" for i in range(65)]
    sixty_four = Episode.from_dict({"states": steps[:64], "actions": steps[:64], "agent_ids": names[:64]})
    assert sixty_four.agent_names == names[:64]
    with pytest.raises(EpisodeValidationError) as caught:
        Episode.from_dict({"states": steps, "actions": steps, "agent_ids": names}, source="f.jsonl:5")
    assert (caught.value.line, caught.value.field) == (5, "agent_ids[64]")
    assert "'agent64' is agent number 65 of the episode; at most 64 distinct agents" in str(caught.value)
