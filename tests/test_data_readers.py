import json
from pathlib import Path

import pytest

from agentfast.data import (
    DataError,
    Episode,
    convert,
    detect_format,
    load_episodes,
    read_chatgpt_export,
    read_episodes_jsonl,
    read_openai_chat_jsonl,
    write_episodes_jsonl,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
GOOD = {"states": ["s0", "s1"], "actions": ["a0", "a1"], "rewards": [0, 1], "metadata": {"task_type": "t"}}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- episode JSONL

def test_episode_jsonl_good_file_with_blank_lines(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD)])
    report = read_episodes_jsonl(path)
    assert len(report.episodes) == 2 and report.skipped == 0 and report.errors == []
    assert report.episodes[0].rewards == [0.0, 1.0]
    assert "read 2 episodes" in report.summary() and "no bad records" in report.summary()


def test_episode_jsonl_strict_stops_at_first_error_with_location(tmp_path):
    bad_length = {**GOOD, "actions": ["a0"]}
    path = write_lines(tmp_path / "e.jsonl", [json.dumps(GOOD), json.dumps(bad_length), "{not json"])
    with pytest.raises(DataError) as caught:
        read_episodes_jsonl(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(path), 2, "actions")


def test_episode_jsonl_lenient_skips_and_counts(tmp_path):
    lines = [json.dumps(GOOD), "{not json", json.dumps({**GOOD, "rewards": [0, None]}), json.dumps(GOOD)]
    path = write_lines(tmp_path / "e.jsonl", lines)
    with pytest.warns(UserWarning, match="skipped 2 bad records"):
        report = read_episodes_jsonl(path, strict=False)
    assert len(report.episodes) == 2 and report.skipped == 2
    assert [(e.line, e.field) for e in report.errors] == [(2, None), (3, "rewards[1]")]
    assert "malformed JSON" in str(report.errors[0])
    assert "skipped 2 bad records" in report.summary()



def test_huge_integers_are_field_or_line_errors_in_both_modes(tmp_path):
    huge_reward = '{"states": ["s"], "actions": ["a"], "rewards": [1%s]}' % ("0" * 400)
    too_many_digits = '{"states": ["s"], "actions": ["a"], "rewards": [%s]}' % ("9" * 5000)
    path = write_lines(tmp_path / "e.jsonl", [json.dumps(GOOD), huge_reward, too_many_digits])
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
    episodes = [Episode.from_dict({**GOOD, "agent_ids": ["coder", "reviewer"], "options": ["o", "p"]})]
    assert write_episodes_jsonl(episodes, tmp_path / "out" / "x.jsonl") == 1
    assert read_episodes_jsonl(tmp_path / "out" / "x.jsonl").episodes == episodes
    assert not list((tmp_path / "out").glob("*.tmp"))


# ---------------------------------------------------------------- OpenAI chat JSONL

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


def test_openai_chat_steps_states_actions_and_agents(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(CHAT)])
    (episode,) = read_openai_chat_jsonl(path).episodes
    assert episode.actions == [
        "Let me look.",
        '[tool call] run_tests({"path": "tests"})',
        "Fixed it.",
    ]
    assert episode.states[0] == "system: You are helpful.\nuser: The build fails."
    assert episode.states[1] == "(no new input)"  # an assistant turn right after another
    assert episode.states[2] == "tool (c1): 3 failed\nuser: Any luck?"
    assert episode.agent_labels() == ["planner", "coder", "coder"]
    assert episode.task_type == "debugging"


def test_openai_chat_full_context_keeps_history(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(CHAT)])
    (episode,) = read_openai_chat_jsonl(path, state_context="full").episodes
    assert episode.states[2].startswith("system: You are helpful.\nuser: The build fails.\nassistant (planner)")
    assert episode.states[2].endswith("user: Any luck?")


def test_openai_chat_unnamed_single_agent_has_no_agent_ids(tmp_path):
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (episode,) = read_openai_chat_jsonl(write_lines(tmp_path / "c.jsonl", [json.dumps(record)])).episodes
    assert episode.agent_ids is None and episode.states == ["user: hi"]


@pytest.mark.parametrize(
    "record, field, phrase",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no assistant message"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "must be one of"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "must be a string"),
        ({"messages": "hi"}, "messages", "not a list"),
        ({"prompt": "x"}, "messages", "missing"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0]", "neither content nor tool calls"),
    ],
)
def test_openai_chat_malformed(tmp_path, record, field, phrase):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(CHAT), json.dumps(record)])
    with pytest.raises(DataError) as caught:
        read_openai_chat_jsonl(path)
    assert (caught.value.line, caught.value.field) == (2, field)
    assert phrase in str(caught.value)
    with pytest.warns(UserWarning):
        report = read_openai_chat_jsonl(path, strict=False)
    assert len(report.episodes) == 1 and report.skipped == 1


# ---------------------------------------------------------------- ChatGPT export

def node(node_id, parent, role=None, text="", children=(), recipient="all", name=None):
    message = None
    if role is not None:
        message = {"id": node_id, "author": {"role": role, "name": name},
                   "content": {"content_type": "text", "parts": [text]}, "recipient": recipient}
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


def test_chatgpt_export_follows_current_node(tmp_path):
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps([conversation(), conversation("a2b")], indent=2))
    report = read_chatgpt_export(path)
    first, second = report.episodes
    assert first.states == ["user: Why is it slow?", "tool (python): 90% in parse()"]
    assert first.actions == ["[tool call] python(print(profile()))", "parse() dominates; cache it."]
    assert second.actions[-1] == "An abandoned regenerated answer."
    assert first.metadata["title"] == "slow"


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c.pop("current_node"), "current_node"),
        (lambda c: c.update(current_node="nowhere"), "current_node"),
        (lambda c: c["mapping"]["u1"].update(parent="a2"), "mapping.root.parent"),
        (lambda c: c["mapping"]["u1"]["message"]["author"].update(role="robot"), "mapping.u1.message.author.role"),
        (lambda c: c.update(mapping={}), "mapping"),
    ],
)
def test_chatgpt_export_malformed_conversations(tmp_path, change, field):
    broken = conversation()
    change(broken)
    path = tmp_path / "conversations.json"
    path.write_text("[\n" + json.dumps(conversation()) + ",\n" + json.dumps(broken) + "\n]")
    with pytest.raises(DataError) as caught:
        read_chatgpt_export(path)
    assert caught.value.line == 3 and "conversation 1" in str(caught.value)
    if field == "mapping.root.parent":  # a cycle: u1 -> a2 -> t1 -> a1 -> u1
        assert "cycle" in str(caught.value)
    else:
        assert caught.value.field == field
    with pytest.warns(UserWarning):
        report = read_chatgpt_export(path, strict=False)
    assert len(report.episodes) == 1 and report.skipped == 1


def test_chatgpt_export_malformed_json_reports_line(tmp_path):
    path = tmp_path / "conversations.json"
    path.write_text("[\n" + json.dumps(conversation()) + ",\n{\"mapping\": oops}\n]")
    with pytest.raises(DataError) as caught:
        read_chatgpt_export(path)
    assert caught.value.line == 3 and "malformed JSON" in str(caught.value)


# ---------------------------------------------------------------- detection and conversion

def test_detect_format_and_convert(tmp_path):
    episodes = write_lines(tmp_path / "e.jsonl", [json.dumps(GOOD)])
    chat = write_lines(tmp_path / "c.jsonl", [json.dumps(CHAT)])
    export = tmp_path / "conversations.json"
    export.write_text(json.dumps([conversation()]))
    assert [detect_format(p) for p in (episodes, chat, export)] == ["episodes", "openai_chat", "chatgpt_export"]
    report = convert(chat, tmp_path / "out.jsonl")
    assert load_episodes(tmp_path / "out.jsonl").episodes == report.episodes
    with pytest.raises(ValueError, match="unknown format"):
        load_episodes(chat, format="xml")


@pytest.mark.parametrize("first", [{"states": ["s"]}, {"states": ["s"], "actions": []}, CHAT],
                         ids=["episode-missing-actions", "bad-episode", "chat-record"])
def test_a_json_array_of_records_asks_for_one_record_per_line(tmp_path, first):
    """Only an array of ChatGPT conversations is a format; an array of episodes or chat records
    (even one whose first record is broken) is told to become JSONL."""
    path = tmp_path / "records.json"
    path.write_text(json.dumps([first, GOOD]))
    for strict in (True, False):
        with pytest.raises(DataError, match="JSON array of records .* one record per line"):
            load_episodes(path, strict=strict)
    path.write_text(json.dumps([{"current_node": None, "title": "t"}]))
    assert detect_format(path) == "chatgpt_export"


def test_bundled_examples_read_cleanly():
    report = load_episodes(EXAMPLES / "episodes.jsonl")
    assert len(report.episodes) >= 300 and report.skipped == 0
    task_types = {e.task_type for e in report.episodes}
    assert {"debugging", "explain_concept", "write_tests", "refactor", "code_review", "data_analysis"} <= task_types
    assert any(e.agent_names and {"planner", "coder", "reviewer"} <= set(e.agent_names) for e in report.episodes)
    assert all(e.options is not None and e.rewards is not None for e in report.episodes)
    assert len(load_episodes(EXAMPLES / "chat.jsonl").episodes) > 0
    assert len(load_episodes(EXAMPLES / "conversations.json").episodes) > 0


def test_detect_format_reads_a_first_line_of_any_length(tmp_path):
    long_state = "x" * 70_000  # the line is longer than any fixed-size peek
    episodes = write_lines(tmp_path / "long.jsonl", [json.dumps({**GOOD, "states": [long_state, "s1"]})])
    chat = write_lines(tmp_path / "long_chat.jsonl", [json.dumps(
        {"messages": [{"role": "user", "content": long_state}, {"role": "assistant", "content": "ok"}]})])
    assert detect_format(episodes) == "episodes" and detect_format(chat) == "openai_chat"
    assert load_episodes(episodes).episodes[0].states[0] == long_state
    assert load_episodes(chat).episodes[0].states == [f"user: {long_state}"]


def test_detect_format_passes_over_a_malformed_first_line(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ["{not json", json.dumps(CHAT)])
    assert detect_format(path) == "openai_chat"
    with pytest.raises(DataError) as caught:  # strict: the reader names the bad line
        load_episodes(path)
    assert caught.value.line == 1 and "malformed JSON" in str(caught.value)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        report = load_episodes(path, strict=False)
    assert report.format == "openai_chat" and len(report.episodes) == 1 and report.skipped == 1


def test_detect_format_without_any_json_object_names_the_first_bad_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["", "{not json", "3"])
    with pytest.raises(DataError) as caught:
        detect_format(path)
    message = str(caught.value)
    assert caught.value.path == str(path) and caught.value.line == 2
    assert "line 2: malformed JSON" in message
    assert "pass format= one of episodes, openai_chat, chatgpt_export (--format on the command line)" in message


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_detect_format_of_an_empty_file_says_it_is_empty(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="the file is empty") as caught:
        load_episodes(path)
    assert caught.value.path == str(path)


def test_files_with_a_utf8_bom_are_read(tmp_path):
    episodes = tmp_path / "bom.jsonl"
    episodes.write_text("\ufeff" + json.dumps(GOOD) + "\n", encoding="utf-8")
    chat = tmp_path / "bom_chat.jsonl"
    chat.write_text("\ufeff" + json.dumps(CHAT) + "\n", encoding="utf-8")
    export = tmp_path / "conversations.json"
    export.write_text("\ufeff" + json.dumps([conversation()]), encoding="utf-8")
    assert [detect_format(p) for p in (episodes, chat, export)] == ["episodes", "openai_chat", "chatgpt_export"]
    assert load_episodes(episodes).episodes == [Episode.from_dict(GOOD)]
    assert len(load_episodes(chat).episodes) == 1 and len(load_episodes(export).episodes) == 1


def test_non_utf8_bytes_are_errors_naming_file_and_line(tmp_path):
    latin1 = json.dumps({**GOOD, "states": ["café", "s1"]}, ensure_ascii=False).encode("latin-1")
    only_bad = tmp_path / "latin1.jsonl"
    only_bad.write_bytes(latin1 + b"\n")
    with pytest.raises(DataError) as caught:
        detect_format(only_bad)
    assert caught.value.path == str(only_bad) and "line 1: not UTF-8 text: byte 0xe9" in str(caught.value)

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(json.dumps(GOOD).encode() + b"\n" + latin1 + b"\n")
    with pytest.raises(DataError) as caught:
        load_episodes(mixed)
    assert (caught.value.path, caught.value.line) == (str(mixed), 2) and "UTF-8" in str(caught.value)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        report = load_episodes(mixed, strict=False)
    assert len(report.episodes) == 1 and report.skipped == 1

    export = tmp_path / "conversations.json"
    export.write_bytes(b"[\n" + json.dumps(conversation()).encode() + b",\n\"caf\xe9\"\n]")
    with pytest.raises(DataError) as caught:
        load_episodes(export)
    assert (caught.value.path, caught.value.line) == (str(export), 3) and "UTF-8" in str(caught.value)


def test_chat_messages_after_the_last_assistant_message_are_counted(tmp_path):
    trailing = {"messages": CHAT["messages"] + [
        {"role": "user", "content": "Thanks!"}, {"role": "tool", "tool_call_id": "c2", "content": "done"}]}
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(CHAT), json.dumps(trailing)])
    with pytest.warns(UserWarning, match="left out 2 messages after the last assistant message"):
        report = read_openai_chat_jsonl(path)
    assert report.unanswered_messages == 2 and report.skipped == 0
    first, second = report.episodes
    assert (second.states, second.actions) == (first.states, first.actions)
    assert "left out 2 messages" in report.summary()

    export = tmp_path / "conversations.json"
    unanswered = conversation()
    unanswered["mapping"]["u2"] = node("u2", "a2", "user", "And now?")
    unanswered["current_node"] = "u2"
    export.write_text(json.dumps([conversation(), unanswered]))
    with pytest.warns(UserWarning, match="left out 1 message after"):
        report = read_chatgpt_export(export)
    assert report.unanswered_messages == 1 and report.episodes[1].actions == report.episodes[0].actions


def test_conversations_ending_with_the_assistant_leave_nothing_out(tmp_path, recwarn):
    report = read_openai_chat_jsonl(write_lines(tmp_path / "c.jsonl", [json.dumps(CHAT)]))
    assert report.unanswered_messages == 0 and "left out" not in report.summary()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_array_detection_reads_only_a_prefix_that_holds_the_first_element(tmp_path):
    from agentfast.data.readers import _first_array_element

    first = {**conversation(), "title": "caf\u00e9 " * 50}
    path = tmp_path / "conversations.json"
    # Past the first element: 300 KB of space, then a byte no UTF-8 text has (the export
    # reader reports it by line; detection never reads that far).
    path.write_bytes(b"[" + json.dumps(first, ensure_ascii=False).encode() + b"," + b" " * 300_000 + b"\xff]")
    assert detect_format(path) == "chatgpt_export"
    for prefix in (1, 7, 64):  # prefixes that cut the element, some inside a two-byte character
        assert _first_array_element(path, prefix_bytes=prefix) == first
    with pytest.raises(DataError, match="not UTF-8"):
        load_episodes(path)
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="no readable first element"):
        _first_array_element(truncated, prefix_bytes=16)
