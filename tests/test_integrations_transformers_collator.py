"""AgentChatCollator: input_ids, labels, agent ids and visibility from episodes and chat records.

The tokenizer is word-level over the bundled example data (no download), so every word is
one token and expectations can be spelled out word by word.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from agentfast.integrations.transformers import AgentChatCollator, AttentionFallbackWarning
from agentfast.integrations.transformers.collator import IGNORE_INDEX
from tests.fake_encoders import word_tokenizer
from tests.test_integrations_transformers import hand_built_mask

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
EPISODES = [json.loads(line) for line in (DATA / "episodes.jsonl").read_text().splitlines()]
CHATS = [json.loads(line) for line in (DATA / "chat.jsonl").read_text().splitlines()]
TEAM = next(e for e in EPISODES if e["metadata"]["multi_agent"] and len(set(e["agent_ids"])) == 3)
TEMPLATE = ("{% for m in messages %}[CLS] {{ m['role'] }} : {{ m['content'] }} [SEP]{% endfor %}"
            "{% if add_generation_prompt %}[CLS] assistant : {% endif %}")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    texts = [t for e in EPISODES for t in e["states"] + e["actions"]]
    texts += [m["content"] for c in CHATS for m in c["messages"] if isinstance(m.get("content"), str)]
    return word_tokenizer(texts + ["user system assistant tool planner coder reviewer : You are a team"])


def words(tokenizer, text: str) -> list[str]:
    return tokenizer.tokenize(text)


def tokens(tokenizer, encoded, where) -> list[str]:
    return tokenizer.convert_ids_to_tokens([i for i, keep in zip(encoded.input_ids, where) if keep])


def test_episode_tokens_belong_to_the_agent_of_their_step(tokenizer):
    collator = AgentChatCollator(tokenizer, system_prompt="You are a team.")
    encoded = collator.encode(TEAM)
    names = encoded.agent_names
    assert names[0] == "<shared>" and set(names[1:]) == set(TEAM["agent_ids"])
    assert tokens(tokenizer, encoded, [a == 0 for a in encoded.agent_ids]) == words(tokenizer, "system: You are a team.")
    for agent in set(TEAM["agent_ids"]):
        expected = []
        for state, action, owner in zip(TEAM["states"], TEAM["actions"], TEAM["agent_ids"]):
            if owner == agent:
                expected += words(tokenizer, f"user: {state}") + words(tokenizer, f"{agent}: {action}") + ["[EOS]"]
        mine = [names[a] == agent for a in encoded.agent_ids]
        assert tokens(tokenizer, encoded, mine) == expected


def test_labels_cover_only_the_chosen_agents_actions(tokenizer):
    encoded = AgentChatCollator(tokenizer, train_on={"coder"}).encode(TEAM)
    trained = [label != IGNORE_INDEX for label in encoded.labels]
    expected = []
    for action, owner in zip(TEAM["actions"], TEAM["agent_ids"]):
        if owner == "coder":
            expected += words(tokenizer, action) + ["[EOS]"]
    assert tokens(tokenizer, encoded, trained) == expected
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(encoded.labels, encoded.input_ids))
    everyone = AgentChatCollator(tokenizer).encode(TEAM)
    assert sum(label != IGNORE_INDEX for label in everyone.labels) == sum(
        len(words(tokenizer, a)) + 1 for a in TEAM["actions"])


def test_visibility_follows_the_episode_metadata(tokenizer):
    encoded = AgentChatCollator(tokenizer).encode(TEAM)
    names = encoded.agent_names
    declared = TEAM["metadata"]["visibility"]
    for viewer, row in zip(names, encoded.visibility):
        for seen, allowed in zip(names, row.tolist()):
            expected = seen == "<shared>" or viewer == "<shared>" or seen == viewer or seen in declared[viewer]
            assert allowed == expected, (viewer, seen)
    private = AgentChatCollator(tokenizer, visibility="private").encode(TEAM).visibility
    assert torch.equal(private, torch.eye(len(names), dtype=torch.bool) | (torch.arange(len(names)) == 0)[None, :])


def test_chat_template_headers_are_not_trained_and_weight_zero_turns_are_skipped(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = TEMPLATE
    record = {"messages": [
        {"role": "system", "content": "You are a team"},
        {"role": "user", "content": "Please review the diff"},
        {"role": "assistant", "name": "planner", "content": "Let me restate the goal", "weight": 0},
        {"role": "tool", "content": "Draft saved"},
        {"role": "assistant", "name": "coder", "content": [{"type": "text", "text": "I'll read the diff"}]},
    ]}
    encoded = AgentChatCollator(tokenizer).encode(record)
    assert tokens(tokenizer, encoded, [label != IGNORE_INDEX for label in encoded.labels]) == (
        words(tokenizer, "I'll read the diff") + ["[SEP]"])
    by_agent = {name: tokens(tokenizer, encoded, [encoded.agent_names[a] == name for a in encoded.agent_ids])
                for name in encoded.agent_names}
    assert by_agent["<shared>"] == ["[CLS]"] + words(tokenizer, "system : You are a team") + ["[SEP]"]
    # The user turn belongs to the agent acting next (planner); the tool result to the coder.
    assert by_agent["planner"][:2] == ["[CLS]", "user"]
    assert by_agent["coder"] == (["[CLS]"] + words(tokenizer, "tool : Draft saved") + ["[SEP]", "[CLS]"]
                                 + words(tokenizer, "assistant : I'll read the diff") + ["[SEP]"])


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_pad_on_the_tokenizer_side(tokenizer, side):
    tokenizer.padding_side = side
    try:
        records = [TEAM, EPISODES[0], CHATS[0]]
        collator = AgentChatCollator(tokenizer, pad_to_multiple_of=8)
        batch = collator(records)
    finally:
        tokenizer.padding_side = "right"
    lengths = [len(collator.encode(r).input_ids) for r in records]
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(lengths)
    for row, (length, record) in enumerate(zip(lengths, records)):
        encoded = collator.encode(record)
        span = slice(width - length, width) if side == "left" else slice(0, length)
        assert batch["input_ids"][row, span].tolist() == encoded.input_ids
        assert batch["labels"][row, span].tolist() == encoded.labels
        assert batch["attention_mask"][row].sum() == length and batch["attention_mask"][row, span].all()
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()
        a = len(encoded.agent_names)
        assert torch.equal(batch["agent_visibility"][row, :a, :a], encoded.visibility)


def test_bad_records_are_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="record 1: .* more than max_length=20"):
        AgentChatCollator(tokenizer, max_length=20)([{"messages": [{"role": "user", "content": "hi"}]}, TEAM])
    with pytest.raises(ValueError, match="record 0: expected an episode"):
        AgentChatCollator(tokenizer)([{"text": "hello"}])
    with pytest.raises(ValueError, match="message 0: each message needs a string 'role'"):
        AgentChatCollator(tokenizer)([{"messages": [{"content": "hi"}]}])
    with pytest.raises(ValueError, match=r"no token of this batch carries loss: train_on=\['tester'\]"):
        AgentChatCollator(tokenizer, train_on="tester")([TEAM])
    encoded_calls = json.dumps([{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}])
    with pytest.raises(ValueError, match="message 1: 'tool_calls' must be a list of tool calls, got str"):
        AgentChatCollator(tokenizer)([{"messages": [{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": None,
                                                    "tool_calls": encoded_calls}]}])
    crowd = {"messages": [{"role": "assistant", "name": f"a{i}", "content": "ok"} for i in range(64)]}
    with pytest.raises(ValueError, match="64 agents; at most 63"):
        AgentChatCollator(tokenizer)([crowd])


def test_collated_batch_trains_like_eager_with_the_same_mask_written_out(tokenizer):
    batch = AgentChatCollator(tokenizer, train_on={"coder", "planner"})([TEAM, EPISODES[0]])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="agentfast")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionFallbackWarning)
        ours = model(**batch).loss
    mask = hand_built_mask(batch["agent_ids"], batch["agent_visibility"], batch["attention_mask"].bool())
    model.set_attn_implementation("eager")
    expected = model(input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"]).loss
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_the_fine_tuning_example_lowers_the_validation_loss(capsys):
    import importlib.util

    path = DATA.parent / "finetune_llm_agents.py"
    spec = importlib.util.spec_from_file_location("finetune_llm_agents", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--steps", "6", "--log-every", "3", "--hidden-size", "32", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    before = float(out.split("validation loss before training: ")[1].split()[0])
    after = float(out.split("validation loss after 6 steps: ")[1].split()[0])
    assert after < before - 0.3, out
