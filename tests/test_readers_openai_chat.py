"""OpenAI chat fine-tuning records, as the fine-tuning docs define them."""

import json

import pytest

from agentfast.data import DataError, load_episodes, read_openai_chat_jsonl
from tests.reader_records import CHAT, EXAMPLES, write_jsonl, write_lines


def read_one(tmp_path, record, **kwargs):
    report = read_openai_chat_jsonl(write_jsonl(tmp_path / "c.jsonl", [record]), **kwargs)
    (episode,) = report.episodes
    return episode, report


def chat(*messages, **top):
    return {"messages": list(messages), **top}


def test_steps_states_actions_and_agents(tmp_path):
    episode, report = read_one(tmp_path, CHAT)
    assert episode.actions == ["Let me look.", '[tool call] run_tests({"path": "tests"})', "Fixed it."]
    assert episode.states[0] == "system: You are helpful.\nuser: The build fails."
    assert episode.states[1] == "(no new input)"  # an assistant turn right after another
    assert episode.states[2] == "tool (run_tests): 3 failed\nuser: Any luck?"  # named by its call
    assert episode.agent_labels() == ["planner", "coder", "coder"]
    assert episode.task_type == "debugging" and episode.metadata["source"] == "c.jsonl:1"
    assert report.changes() == []


def test_full_context_keeps_history(tmp_path):
    episode, _ = read_one(tmp_path, CHAT, state_context="full")
    assert episode.states[2].startswith("system: You are helpful.\nuser: The build fails.\nassistant (planner)")
    assert episode.states[2].endswith("user: Any luck?")


def test_weight_zero_assistant_messages_are_context_not_actions(tmp_path):
    record = chat({"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Lyon.", "weight": 0},
                  {"role": "user", "content": "Wrong."},
                  {"role": "assistant", "content": "Paris.", "weight": 1})
    episode, report = read_one(tmp_path, record)
    assert episode.actions == ["Paris."]
    assert episode.states == ["user: Capital of France?\nassistant: Lyon.\nuser: Wrong."]
    assert report.counts["weight0_messages"] == 1
    assert "kept 1 assistant message with weight 0 as context" in report.summary()


@pytest.mark.parametrize("message, action", [
    ({"role": "assistant", "refusal": "I can't help with that."}, "I can't help with that."),
    ({"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}, "No."),
])
def test_refusals_are_the_action_text(tmp_path, message, action):
    episode, report = read_one(tmp_path, chat({"role": "user", "content": "Do it."}, message))
    assert episode.actions == [action] and report.counts["refusals"] == 1


def test_custom_tool_calls_and_tool_results_named_by_their_function(tmp_path):
    record = chat(
        {"role": "user", "content": "Patch it."},
        {"role": "assistant", "tool_calls": [
            {"id": "x1", "type": "custom", "custom": {"name": "apply_patch", "input": "*** Begin Patch"}},
            {"id": "x2", "type": "function", "function": {"name": "run", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "x2", "content": "ok"},
        {"role": "tool", "tool_call_id": "x1", "content": "applied"},
        {"role": "assistant", "content": "Done."},
        tools=[{"type": "custom", "custom": {"name": "apply_patch"}}], parallel_tool_calls=False)
    episode, _ = read_one(tmp_path, record)
    assert episode.actions[0] == "[tool call] apply_patch(*** Begin Patch)\n[tool call] run({})"
    assert episode.states[1] == "tool (run): ok\ntool (apply_patch): applied"
    assert episode.metadata["tools"] == record["tools"] and episode.metadata["parallel_tool_calls"] is False


def test_legacy_functions_and_function_messages(tmp_path):
    record = chat({"role": "user", "content": "2+2?"},
                  {"role": "assistant", "function_call": {"name": "calc", "arguments": "{\"x\": \"2+2\"}"}},
                  {"role": "function", "name": "calc", "content": "4"},
                  {"role": "assistant", "content": "4."},
                  functions=[{"name": "calc", "parameters": {}}])
    episode, _ = read_one(tmp_path, record)
    assert episode.actions == ['[tool call] calc({"x": "2+2"})', "4."]
    assert episode.states[1] == "function (calc): 4" and episode.metadata["functions"] == record["functions"]


def test_content_parts_keep_text_and_name_files(tmp_path):
    record = chat({"role": "user", "content": [
        {"type": "text", "text": "Summarise"},
        {"type": "file", "file": {"filename": "report.pdf", "file_id": "file-1"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]},
        {"role": "assistant", "content": "It says hi."})
    episode, report = read_one(tmp_path, record)
    assert episode.states == ["user: Summarise\n[file: report.pdf]\n[image]\n[audio]"]
    assert report.counts["media_parts"] == 3


def test_records_with_and_without_names_do_not_alias(tmp_path):
    """An unnamed assistant in a data set that names agents gets an agent of its own."""
    named = chat({"role": "user", "content": "hi"}, {"role": "assistant", "name": "planner", "content": "plan"})
    unnamed = chat({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    report = read_openai_chat_jsonl(write_jsonl(tmp_path / "c.jsonl", [named, unnamed]))
    assert [e.agent_labels() for e in report.episodes] == [["planner"], ["assistant"]]
    assert report.counts["default_agent_episodes"] == 1
    alone = read_openai_chat_jsonl(write_jsonl(tmp_path / "u.jsonl", [unnamed]))
    assert alone.episodes[0].agent_ids is None  # nothing to alias with: a single agent


@pytest.mark.parametrize("record, field, phrase", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no assistant message"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "must be one of"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "must be a string"),
    ({"messages": "hi"}, "messages", "must be a list"),
    ({"prompt": "x"}, "messages", "missing"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0]", "neither content nor tool calls"),
    (chat({"role": "assistant", "content": "x", "weight": 2}), "messages[0].weight", "must be 0 or 1"),
    (chat({"role": "assistant", "content": "x", "weight": 0}), "messages", "weight 0"),
    (chat({"role": "user", "content": [{"type": "text", "text": 5}]}), "messages[0].content[0].text", "string"),
    (chat({"role": "assistant", "tool_calls": {"id": 1}}), "messages[0].tool_calls", "must be a list"),
    (chat({"role": "assistant", "tool_calls": [{"type": "custom", "custom": {"input": "x"}}]}),
     "messages[0].tool_calls[0].custom.name", "missing"),
    (chat({"role": "tool", "tool_call_id": "nope", "content": "x"}), "messages[0].tool_call_id", "no earlier tool call"),
    (chat({"role": "assistant", "content": "x"}, tools={"a": 1}), "tools", "must be a list"),
])
def test_malformed_records_are_field_errors(tmp_path, record, field, phrase):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(CHAT), json.dumps(record)])
    with pytest.raises(DataError) as caught:
        read_openai_chat_jsonl(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 2, field)
    assert phrase in str(caught.value)
    with pytest.warns(UserWarning):
        report = read_openai_chat_jsonl(path, strict=False)
    assert len(report.episodes) == 1 and report.skipped == 1


def test_messages_after_the_last_action_are_counted(tmp_path, recwarn):
    trailing = {"messages": CHAT["messages"] + [
        {"role": "user", "content": "Thanks!"}, {"role": "tool", "tool_call_id": "c1", "content": "done"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [CHAT, trailing])
    with pytest.warns(UserWarning, match="left out 2 messages after the last assistant message"):
        report = read_openai_chat_jsonl(path)
    assert report.unanswered_messages == 2 and report.skipped == 0
    first, second = report.episodes
    assert (second.states, second.actions) == (first.states, first.actions)
    recwarn.clear()
    clean = read_openai_chat_jsonl(write_jsonl(tmp_path / "d.jsonl", [CHAT]))
    assert clean.unanswered_messages == 0 and "left out" not in clean.summary()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_bundled_chat_example():
    report = load_episodes(EXAMPLES / "chat.jsonl")
    assert report.format == "openai_chat" and len(report.episodes) == 8 and report.skipped == 0
    assert any("tool (run_tests)" in s for e in report.episodes for s in e.states)
    # single- and multi-agent records mixed: the unnamed ones get the default agent
    assert report.counts["default_agent_episodes"] == 4
    assert all(e.agent_labels() is not None for e in report.episodes)
