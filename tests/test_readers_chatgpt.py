"""ChatGPT's ``conversations.json`` export, with the message shapes exports hold today."""

import json

import pytest

from agentfast.data import DataError, detect_format, load_episodes, read_chatgpt_export
from tests.reader_records import EXAMPLES, conversation, linear_conversation, node


def export(tmp_path, *conversations, name="conversations.json", indent=None):
    path = tmp_path / name
    path.write_text(json.dumps(list(conversations), indent=indent))
    return path


def read(tmp_path, *conversations):
    return read_chatgpt_export(export(tmp_path, *conversations))


def text(node_id, role, value, **kwargs):
    return node(node_id, None, role, value, **kwargs)


def typed(node_id, role, content, **kwargs):
    return node(node_id, None, role, content=content, **kwargs)


def test_follows_current_node(tmp_path):
    report = read(tmp_path, conversation(), conversation("a2b"))
    first, second = report.episodes
    assert first.states == ["user: Why is it slow?", "tool (python): 90% in parse()"]
    assert first.actions == ["[tool call] python(print(profile()))", "parse() dominates; cache it."]
    assert second.actions[-1] == "An abandoned regenerated answer."
    assert first.metadata["title"] == "slow"


def test_hidden_and_reasoning_messages_never_pair_a_request_with_the_wrong_answer(tmp_path):
    """o1-style turns: the user's request pairs with the visible reply, not the thoughts."""
    conv = linear_conversation(
        node("root", None),
        text("sys", "system", "", metadata={"is_visually_hidden_from_conversation": True}),
        text("u", "user", "Prove it."),
        typed("th", "assistant", {"content_type": "thoughts", "thoughts": [
            {"summary": "Considering", "content": "Let me think about primes", "finished": True}],
            "source_analysis_msg_id": "x"}),
        typed("rr", "assistant", {"content_type": "reasoning_recap", "content": "Thought for 5 seconds"}),
        text("an", "assistant", "secret scratch", metadata={}),
        text("hid", "assistant", "hidden note", metadata={"is_visually_hidden_from_conversation": True}),
        text("a", "assistant", "Here is the proof."),
    )
    conv["mapping"]["an"]["message"]["channel"] = "analysis"
    report = read(tmp_path, conv)
    (episode,) = report.episodes
    assert episode.states == ["user: Prove it."] and episode.actions == ["Here is the proof."]
    assert report.counts["reasoning_messages"] == 3 and report.counts["hidden_messages"] == 2
    assert "left out 3 internal reasoning messages" in report.summary()


def test_custom_instructions_and_memory_are_state_text(tmp_path):
    hidden = {"is_visually_hidden_from_conversation": True}
    conv = linear_conversation(
        node("root", None),
        typed("ci", "user", {"content_type": "user_editable_context",
                             "user_profile": "I write novels.", "user_instructions": "Be terse."},
              metadata=hidden),
        text("u", "user", "Name my villain."),
        typed("mem", "assistant", {"content_type": "model_editable_context",
                                   "model_set_context": "1. Likes gothic fiction.", "repository": None}),
        text("a", "assistant", "Count Ashgrave."),
    )
    report = read(tmp_path, conv)
    assert report.episodes[0].states == [
        "custom instructions: I write novels.\nBe terse.\nuser: Name my villain.\n"
        "memory: 1. Likes gothic fiction."]
    assert report.counts["context_messages"] == 2 and "[user_editable_context]" not in report.episodes[0].states[0]


def test_legacy_custom_instructions_in_system_metadata(tmp_path):
    conv = linear_conversation(
        node("root", None),
        text("sys", "system", "", metadata={"is_user_system_message": True, "user_context_message_data": {
            "about_user_message": "I am a chemist.", "about_model_message": "Cite sources."}}),
        text("u", "user", "Hi"), text("a", "assistant", "Hello"))
    assert read(tmp_path, conv).episodes[0].states == ["custom instructions: I am a chemist.\nCite sources.\nuser: Hi"]


def test_browsing_uploads_voice_and_media(tmp_path):
    conv = linear_conversation(
        node("root", None),
        typed("u", "user", {"content_type": "multimodal_text", "parts": [
            {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-abc",
             "width": 10, "height": 10}, "What is in this picture and the PDF?"]},
              metadata={"attachments": [{"id": "file-abc", "name": "cat.png", "mime_type": "image/png"},
                                        {"id": "file-def", "name": "notes.pdf"}]}),
        text("call", "assistant", "search cats", recipient="browser"),
        typed("res", "tool", {"content_type": "tether_browsing_display", "result": "",
                              "summary": "Cats are small felines."}, name="browser"),
        typed("a", "assistant", {"content_type": "multimodal_text", "parts": [
            {"content_type": "audio_transcription", "text": "It is a cat.", "direction": "out"},
            {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://file_1", "format": "wav"}]}),
        typed("u2", "user", {"content_type": "multimodal_text", "parts": [
            {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://file_2"}]}),
        text("a2", "assistant", "Could you say that again?"),
    )
    report = read(tmp_path, conv)
    (episode,) = report.episodes
    assert episode.states[0] == ("user: [image: cat.png]\nWhat is in this picture and the PDF?\n"
                                 "[attached file: notes.pdf]")
    assert episode.states[1] == "tool (browser): Cats are small felines."
    assert episode.actions[1] == "It is a cat."  # the voice reply is its transcript
    assert episode.states[2] == "user: [audio]"
    assert report.counts["media_parts"] == 2 and report.counts["voice_audio_parts"] == 1
    assert report.counts["attachments"] == 1


def test_tool_content_types_read_as_text(tmp_path):
    conv = linear_conversation(
        node("root", None), text("u", "user", "Plot it"),
        typed("code", "assistant", {"content_type": "code", "language": "python", "text": "plot()"},
              recipient="python"),
        typed("out", "tool", {"content_type": "execution_output", "text": "<Figure>"}, name="python"),
        typed("err", "tool", {"content_type": "system_error", "name": "tool_error", "text": "timeout"},
              name="python"),
        typed("web", "tool", {"content_type": "sonic_webpage", "url": "https://a.b", "title": "A",
                              "text": "Body"}, name="web.run"),
        text("a", "assistant", "Done."))
    episode = read(tmp_path, conv).episodes[0]
    assert episode.actions == ["[tool call] python(plot())", "Done."]
    assert episode.states[1] == ("tool (python): <Figure>\ntool (python): error (tool_error): timeout\n"
                                 "tool (web.run): A - https://a.b\nBody")


def test_conversations_without_a_reply_are_skipped_and_counted(tmp_path):
    silent = linear_conversation(node("root", None), text("u", "user", "Anyone?"))
    report = read(tmp_path, conversation(), silent)
    assert len(report.episodes) == 1 and report.skipped == 0
    assert report.counts["conversations_without_reply"] == 1


def test_null_current_node_follows_a_single_branch(tmp_path):
    single = linear_conversation(node("root", None), text("u", "user", "Hi"), text("a", "assistant", "Hello"))
    single["current_node"] = None
    report = read(tmp_path, single)
    assert report.episodes[0].actions == ["Hello"] and report.counts["current_node_missing"] == 1
    branched = conversation()
    branched["current_node"] = None
    with pytest.raises(DataError) as caught:
        read(tmp_path, branched)
    assert caught.value.field == "current_node" and "2 branches" in str(caught.value)


@pytest.mark.parametrize("shape", ["array", "wrapper", "single", "wrapper-one-line"])
def test_wrapper_and_single_conversation_objects(tmp_path, shape):
    path = tmp_path / "conversations.json"
    if shape == "array":
        path.write_text(json.dumps([conversation(), conversation("a2b")], indent=1))
    elif shape == "wrapper":
        path.write_text(json.dumps({"conversations": [conversation(), conversation("a2b")]}, indent=1))
    elif shape == "wrapper-one-line":
        path.write_text(json.dumps({"conversations": [conversation(), conversation("a2b")]}))
    else:
        path.write_text(json.dumps(conversation(), indent=1))
    assert detect_format(path) == "chatgpt_export"
    report = load_episodes(path)
    assert len(report.episodes) == (1 if shape == "single" else 2)
    assert report.episodes[0].actions[-1] == "parse() dominates; cache it."


@pytest.mark.parametrize("change, field", [
    (lambda c: c.update(current_node="nowhere"), "current_node"),
    (lambda c: c["mapping"]["u1"]["message"]["author"].update(role="robot"), "mapping.u1.message.author.role"),
    (lambda c: c.update(mapping={}), "mapping"),
    (lambda c: c["mapping"]["u1"]["message"]["content"].update(parts="Why?"), "mapping.u1.message.content.parts"),
    (lambda c: c["mapping"]["u1"]["message"]["content"].update(parts=[3]), "mapping.u1.message.content.parts[0]"),
    (lambda c: c["mapping"]["u1"]["message"].update(content={"content_type": "code", "text": 5}),
     "mapping.u1.message.content.text"),
    (lambda c: c["mapping"]["u1"]["message"].update(metadata={"attachments": {"name": "x"}}),
     "mapping.u1.message.metadata.attachments"),
    (lambda c: c["mapping"]["u1"]["message"].update(metadata={"is_visually_hidden_from_conversation": "yes"}),
     "mapping.u1.message.metadata.is_visually_hidden_from_conversation"),
    (lambda c: c["mapping"]["u1"].update(parent="a2"), "mapping.u1.parent"),  # a cycle
])
def test_malformed_conversations_are_field_errors(tmp_path, change, field):
    broken = conversation()
    change(broken)
    path = tmp_path / "conversations.json"
    path.write_text("[\n" + json.dumps(conversation()) + ",\n" + json.dumps(broken) + "\n]")
    with pytest.raises(DataError) as caught:
        read_chatgpt_export(path)
    assert (caught.value.line, caught.value.record) == (3, "conversation 1")
    assert caught.value.field == field
    with pytest.warns(UserWarning):
        report = read_chatgpt_export(path, strict=False)
    assert len(report.episodes) == 1 and report.skipped == 1


def test_malformed_json_and_bad_bytes_report_their_line(tmp_path):
    path = tmp_path / "conversations.json"
    path.write_text("[\n" + json.dumps(conversation()) + ",\n{\"mapping\": oops}\n]")
    with pytest.raises(DataError) as caught:
        read_chatgpt_export(path)
    assert caught.value.line == 3 and "malformed JSON" in str(caught.value)
    path.write_bytes(b"[\n" + json.dumps(conversation()).encode() + b",\n\"caf\xe9\"\n]")
    with pytest.raises(DataError) as caught:
        load_episodes(path)
    assert (caught.value.path, caught.value.line) == (str(path), 3) and "UTF-8" in str(caught.value)


def test_bundled_example():
    report = load_episodes(EXAMPLES / "conversations.json")
    assert report.format == "chatgpt_export" and len(report.episodes) == 4 and report.skipped == 0
    assert report.counts["hidden_messages"] == 4  # each conversation's hidden system message
    assert all("earlier wording" not in s for e in report.episodes for s in e.states)  # edited branch
