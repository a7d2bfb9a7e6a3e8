import pytest
import torch

from agentfast.data import (
    IGNORE_INDEX,
    Episode,
    EpisodeDataset,
    Vocabulary,
    collate_episodes,
    discounted_returns,
    make_dataloader,
    split_by_task_type,
    train_val_split,
    window_starts,
)
from tests.fake_encoders import HashEncoder, tiny_encoder


def episode(n, task="debugging", rewards=True, agents=None, options=True, prefix="s"):
    return Episode.from_dict({
        "states": [f"{prefix}{i}" for i in range(n)],
        "actions": [f"act{i % 3}" for i in range(n)],
        "rewards": [float(i + 1) for i in range(n)] if rewards else None,
        "agent_ids": agents,
        "options": [f"opt{i % 2}" for i in range(n)] if options else None,
        "metadata": {"task_type": task},
    })


def test_vocabulary_round_trip_and_errors():
    vocab = Vocabulary.build(["b", "a", "b", "c"])
    assert vocab.labels == ["b", "a", "c"] and len(vocab) == 3
    assert vocab.index("a") == 1 and vocab.label(2) == "c" and "c" in vocab
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(KeyError, match="unknown label 'z'"):
        vocab.index("z")
    with pytest.raises(IndexError):
        vocab.label(3)


def test_discounted_returns_by_hand():
    expected = torch.tensor([1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3.0])
    torch.testing.assert_close(discounted_returns([1, 2, 3], 0.5), expected)


def test_window_starts_cover_every_step():
    assert window_starts(3, 4, 4) == [0]
    assert window_starts(10, 4, 4) == [0, 4, 8]
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(8, 4, 4) == [0, 4]


def test_items_embed_texts_and_index_the_action_bank():
    encoder = HashEncoder(dim=6)
    data = EpisodeDataset([episode(3), episode(2, prefix="t")], encoder, max_seq_len=8, progress=False)
    assert len(encoder.calls) == 1  # every distinct text embedded once, in one call
    assert len(encoder.calls[0]) == len(set(encoder.calls[0])) == 5 + 3
    assert data.state_dim == data.action_dim == 6
    assert data.action_vocab.labels == ["act0", "act1", "act2"]
    assert torch.equal(data.action_bank[1], HashEncoder.vector("act1", 6))
    item = data[0]
    assert torch.equal(item["states"][2], HashEncoder.vector("s2", 6))
    assert torch.equal(data.action_bank[item["action_ids"]], item["actions"])
    assert data.num_options == 2 and data.option_vocab.labels == ["opt0", "opt1"]


def test_collate_pads_with_masks_and_sentinels():
    episodes = [episode(3, rewards=True), episode(1, rewards=False, options=False, prefix="u")]
    data = EpisodeDataset(episodes, HashEncoder(dim=4), max_seq_len=8, gamma=1.0, progress=False)
    batch = collate_episodes([data[0], data[1]])
    assert batch["states"].shape == (2, 3, 4) and batch["actions"].shape == (2, 3, 4)
    assert batch["seq_lens"].tolist() == [3, 1]
    assert batch["valid_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["action_ids"].tolist() == [[0, 1, 2], [0, IGNORE_INDEX, IGNORE_INDEX]]
    assert torch.all(batch["states"][1, 1:] == 0)
    assert batch["options"].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert batch["has_options"].tolist() == [True, False]
    assert batch["has_rewards"].tolist() == [True, False]
    assert batch["returns_to_go"][0].tolist() == [6.0, 5.0, 3.0]
    assert batch["rewards"][1].tolist() == [0.0, 0.0, 0.0]
    assert batch["agent_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["task_types"] == ["debugging", "debugging"]
    assert batch["episode_index"].tolist() == [0, 1]


def test_long_episodes_become_windows_with_whole_episode_returns():
    data = EpisodeDataset([episode(10)], HashEncoder(), max_seq_len=4, window_stride=3, gamma=1.0, progress=False)
    assert [(s, e) for _, s, e in data.windows] == [(0, 4), (3, 7), (6, 10)]
    second = data[1]
    assert second["returns_to_go"].tolist() == [sum(range(4, 11)), sum(range(5, 11)), sum(range(6, 11)), sum(range(7, 11))]
    assert second["timesteps"].tolist() == [3, 4, 5, 6]
    # Overlapping steps count as targets in one window only.
    counted = torch.cat([data[i]["timesteps"][data[i]["target_mask"]] for i in range(len(data))])
    assert counted.tolist() == list(range(10))
    batch = collate_episodes([data[0], data[2]])
    assert batch["seq_lens"].tolist() == [4, 4] and batch["window_start"].tolist() == [0, 6]



def switching_episode():
    """Option o for steps 0-2, p for steps 3-5: o ends after step 2, p at the episode's end."""
    return Episode.from_dict({"states": [f"s{i}" for i in range(6)], "actions": [f"a{i}" for i in range(6)],
                              "options": ["o", "o", "o", "p", "p", "p"]})


EPISODE_TERMINATIONS = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]  # by hand, for switching_episode


def test_termination_labels_belong_to_the_episode_not_the_window():
    data = EpisodeDataset([switching_episode()], HashEncoder(), max_seq_len=2, progress=False)
    assert [data[i]["term_labels"].tolist() for i in range(len(data))] == [[0, 0], [1, 0], [0, 1]]
    batch = collate_episodes([data[i] for i in range(len(data))])
    assert batch["term_labels"].tolist() == [[0, 0], [1, 0], [0, 1]]


def test_termination_labels_of_overlapping_windows():
    data = EpisodeDataset([switching_episode()], HashEncoder(), max_seq_len=4, window_stride=1, progress=False)
    assert [(s, e) for _, s, e in data.windows] == [(0, 4), (1, 5), (2, 6)]
    items = [data[i] for i in range(len(data))]
    # Each window shows the episode's labels of its steps: 0..3, 1..4, 2..5.
    assert [item["term_labels"].tolist() for item in items] == [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]]
    batch = collate_episodes(items)
    counted = batch["term_labels"][batch["target_mask"]]
    assert counted.tolist() == EPISODE_TERMINATIONS


def test_termination_labels_of_short_episodes_and_padding():
    short = Episode.from_dict({"states": ["s0", "s1", "s2"], "actions": ["a0", "a1", "a2"],
                               "options": ["o", "p", "p"]})
    data = EpisodeDataset([short, episode(1, options=False, prefix="u")], HashEncoder(), max_seq_len=8,
                          progress=False)
    batch = collate_episodes([data[0], data[1]])
    # o ends after step 0, p at the end; the one-step episode ends its (absent) option; padding is 0.
    assert batch["term_labels"].tolist() == [[1, 0, 1], [1, 0, 0]]


def test_items_built_by_hand_are_taken_as_whole_episodes():
    data = EpisodeDataset([switching_episode()], HashEncoder(), max_seq_len=8, progress=False)
    item = {k: v for k, v in data[0].items() if k != "term_labels"}
    assert collate_episodes([item])["term_labels"].tolist() == [EPISODE_TERMINATIONS]

def test_agents_by_name_and_visibility():
    named = Episode.from_dict({
        "states": ["a", "b", "c"], "actions": ["x", "y", "z"],
        "agent_ids": ["planner", "coder", "reviewer"],
        "metadata": {"visibility": {"coder": ["planner"]}},
    })
    data = EpisodeDataset([named], HashEncoder(), max_seq_len=4, progress=False)
    assert data.agent_vocab.labels == ["planner", "coder", "reviewer"] and data.num_agents == 3
    item = data[0]
    assert item["agent_ids"].tolist() == [0, 1, 2]
    expected = torch.ones(3, 3, dtype=torch.bool)
    expected[1, 2] = False  # the coder sees the planner and itself, not the reviewer
    assert torch.equal(collate_episodes([item])["agent_mask"][0], expected)


def test_an_unnamed_episode_among_named_ones_gets_a_default_agent_of_its_own():
    unnamed = episode(2, prefix="u")
    named = episode(3, agents=["planner", "coder", "planner"])
    data = EpisodeDataset([unnamed, named], HashEncoder(), max_seq_len=4, progress=False)
    assert data.agent_vocab.labels == ["planner", "coder", "assistant"]
    assert data[0]["agent_ids"].tolist() == [2, 2]  # not 0, the planner
    assert data[1]["agent_ids"].tolist() == [0, 1, 0]
    # A split holding only unnamed episodes, given the whole set's vocabulary, agrees.
    alone = EpisodeDataset([unnamed], HashEncoder(), max_seq_len=4, agent_vocab=data.agent_vocab,
                           progress=False)
    assert alone[0]["agent_ids"].tolist() == [2, 2] and alone.agent_vocab == data.agent_vocab
    # Without names, an unnamed episode is agent 0, next to numbered agents as alone.
    numbered = EpisodeDataset([unnamed, episode(2, agents=[1, 0])], HashEncoder(), max_seq_len=4,
                              progress=False)
    assert numbered.agent_vocab.labels == ["0", "1"] and numbered[0]["agent_ids"].tolist() == [0, 0]


def test_integer_agents_keep_ids_and_given_vocabularies_are_extended():
    numbered = episode(3, agents=[2, 0, 2])
    data = EpisodeDataset([numbered], HashEncoder(), max_seq_len=4, progress=False)
    assert data[0]["agent_ids"].tolist() == [2, 0, 2] and data.num_agents == 3
    given = Vocabulary(["act2", "other"])
    data = EpisodeDataset([episode(3)], HashEncoder(), max_seq_len=4, action_vocab=given, progress=False)
    assert data.action_vocab.labels == ["act2", "other", "act0", "act1"]
    assert given.labels == ["act2", "other"]  # the caller's vocabulary is not modified
    assert data[0]["action_ids"].tolist() == [2, 3, 0]
    assert data.action_bank.shape == (4, 8)



def test_more_than_64_agents_in_the_data_set_is_an_error_naming_the_episode():
    first = episode(40, agents=[f"a{i}" for i in range(40)])
    second = episode(40, agents=[f"b{i}" for i in range(40)], prefix="t")
    second.metadata["source"] = "logs.jsonl:7"
    with pytest.raises(ValueError) as caught:
        EpisodeDataset([first, second], HashEncoder(), max_seq_len=8, progress=False)
    assert str(caught.value) == ("the data set names 80 distinct agents, more than the 64 supported; "
                                 "episode 1 (logs.jsonl:7) brings agent 'b24', the 65th")
    full = EpisodeDataset([episode(2, agents=[63, 0])], HashEncoder(), max_seq_len=8, progress=False)
    assert full.num_agents == 64 and full[0]["agent_ids"].tolist() == [63, 0]


def test_an_unvalidated_huge_agent_id_fails_before_any_allocation():
    # Built directly, not through from_dict, so only the dataset can catch it.
    huge = Episode(states=["s0", "s1"], actions=["a0", "a1"], agent_ids=[0, 10**12])
    with pytest.raises(ValueError, match=r"episode 1 has agent id 1000000000000; agent ids must lie in \[0, 64\)"):
        EpisodeDataset([episode(1), huge], HashEncoder(), max_seq_len=8, progress=False)

def test_works_with_a_real_tiny_encoder():
    encoder = tiny_encoder("last")
    data = EpisodeDataset([episode(2)], encoder, max_seq_len=4, progress=False)
    torch.testing.assert_close(data[0]["states"], encoder.encode(["s0", "s1"], progress=False))


def test_splits():
    episodes = [episode(1, task=t, prefix=f"{t}{i}") for i, t in enumerate(["a", "b", "c", "a", "b"])]
    train, held = split_by_task_type(episodes, ["b"])
    assert [e.task_type for e in train] == ["a", "c", "a"] and [e.task_type for e in held] == ["b", "b"]
    with pytest.raises(ValueError, match="do not occur"):
        split_by_task_type(episodes, ["zzz"])
    first = train_val_split(episodes, 0.4, seed=3)
    assert first == train_val_split(episodes, 0.4, seed=3)
    assert len(first[1]) == 2 and len(first[0]) == 3
    assert sorted(map(id, first[0] + first[1])) == sorted(map(id, episodes))


def test_dataloader_is_deterministic_by_seed():
    episodes = [episode(i + 1, prefix=f"e{i}_") for i in range(12)]
    data = EpisodeDataset(episodes, HashEncoder(), max_seq_len=16, progress=False)

    def order(seed):
        return [b["episode_index"].tolist() for b in make_dataloader(data, 4, shuffle=True, seed=seed)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(sum(order(1), [])) == list(range(12))


def test_bad_arguments():
    with pytest.raises(ValueError, match="window_stride"):
        EpisodeDataset([episode(2)], HashEncoder(), max_seq_len=4, window_stride=5, progress=False)
    with pytest.raises(ValueError, match="at least one episode"):
        EpisodeDataset([], HashEncoder(), max_seq_len=4, progress=False)
