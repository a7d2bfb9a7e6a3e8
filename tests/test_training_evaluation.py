"""Retrieval metrics and baselines on hand-made step records with known answers."""

import pytest
import torch

from agentfast.training.evaluation import (
    StepPredictions,
    StepRecords,
    binary_f1,
    binary_precision_recall,
    confusion_matrix,
    format_table,
    majority_baseline,
    model_metrics,
    nearest_neighbour_baseline,
    rank_bank,
)

BANK = torch.eye(6)  # action i is the unit vector e_i


def _records(states, action_ids, options=None, rewards=None):
    n = len(action_ids)
    ids = torch.tensor(action_ids)
    return StepRecords(
        states=torch.tensor(states, dtype=torch.float32), actions=BANK[ids], action_ids=ids,
        agent_ids=torch.zeros(n, dtype=torch.long),
        options=torch.tensor(options if options is not None else [0] * n),
        has_options=torch.full((n,), options is not None),
        returns_to_go=torch.tensor(rewards if rewards is not None else [0.0] * n),
        has_rewards=torch.full((n,), rewards is not None),
        term_labels=torch.zeros(n), task_types=["a"] * (n - 1) + ["b"])


def test_rank_bank_orders_by_cosine_and_by_logits():
    prediction = torch.tensor([[0.1, 0.9, 0.5, 0, 0, 0]])
    assert rank_bank(prediction, BANK, discrete=False, k=3).tolist() == [[1, 2, 0]]
    logits = torch.tensor([[3.0, -1.0, 2.0, 0.0, 0.0, 0.0]])
    assert rank_bank(logits, BANK, discrete=True, k=2).tolist() == [[0, 2]]


def test_model_metrics_top1_top5_cosine_and_value_error():
    held = _records([[0, 0]] * 4, [0, 1, 2, 3], rewards=[1.0, 1.0, 0.0, 0.0])
    predicted = BANK[[0, 1, 5, 5]].clone()
    predicted[2, 2] = 0.5  # true action 2 is the second choice here
    predicted[3, 3] = -0.5  # true action 3 is the last choice here
    values = torch.tensor([1.5, 1.0, 0.0, 1.0])
    metrics = model_metrics(held, StepPredictions(actions=predicted, values=values), BANK,
                            discrete=False)
    assert metrics["top1"] == pytest.approx(0.5)
    assert metrics["top5"] == pytest.approx(0.75)
    assert metrics["value_mae"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert metrics["option_acc"] is None and metrics["term_f1"] is None
    assert metrics["top1_by_task_type"] == {"a": pytest.approx(2 / 3, abs=1e-4), "b": 0.0}


def test_majority_baseline_predicts_the_most_frequent_training_action():
    train = _records([[0, 0]] * 5, [3, 3, 3, 1, 1], options=[0, 0, 1, 1, 1], rewards=[2.0] * 5)
    held = _records([[0, 0]] * 4, [3, 1, 3, 2], options=[1, 0, 1, 1], rewards=[1.0] * 4)
    metrics = majority_baseline(train, held, BANK)
    assert metrics["top1"] == pytest.approx(0.5)
    assert metrics["top5"] == pytest.approx(0.75)  # the bank's other actions never occurred
    assert metrics["option_acc"] == pytest.approx(0.75)
    assert metrics["value_mae"] == pytest.approx(1.0)


def test_nearest_neighbour_baseline_copies_the_most_similar_state():
    train = _records([[1, 0], [0, 1], [-1, 0]], [0, 1, 2])
    held = _records([[0.9, 0.1], [0.1, 0.9], [-1, -0.2]], [0, 2, 2])
    metrics = nearest_neighbour_baseline(train, held, BANK)
    assert metrics["top1"] == pytest.approx(2 / 3)
    assert metrics["top5"] == pytest.approx(1.0)


def test_option_confusion_and_termination_precision_recall():
    held = _records([[0, 0]] * 5, [0, 1, 2, 3, 4], options=[0, 0, 1, 2, 2])
    held.term_labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    option_logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 0]), 3).float()
    term_logits = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])  # predicted ends: steps 0, 1, 4
    metrics = model_metrics(held, StepPredictions(actions=BANK[[0, 1, 2, 3, 4]], option_logits=option_logits,
                                                  term_logits=term_logits), BANK, discrete=False)
    assert metrics["option_confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]  # row: logged option
    assert metrics["term_precision"] == pytest.approx(2 / 3)  # steps 1, 4 of the predicted 0, 1, 4
    assert metrics["term_recall"] == pytest.approx(2 / 3)  # steps 1, 4 of the real ends 1, 2, 4
    assert metrics["steps_by_task_type"] == {"a": 4, "b": 1}
    assert binary_precision_recall(torch.tensor([0, 0]), torch.tensor([0, 1])) == (None, 0.0)
    assert confusion_matrix(torch.tensor([1]), torch.tensor([0]), 2) == [[0, 0], [1, 0]]


def test_binary_f1_and_the_table():
    assert binary_f1(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5)
    table = format_table([("majority baseline", {"top1": 0.25, "top5": 0.5, "cosine": None})])
    header, rule, row = table.splitlines()
    assert "top-1" in header and "value MAE" in header
    assert row.startswith("majority baseline") and "0.250" in row and row.rstrip().endswith("-")



def test_collected_steps_carry_the_episode_termination_labels_across_windows():
    from agentfast.data import Episode, EpisodeDataset
    from agentfast.training.evaluation import collect_steps
    from tests.fake_encoders import HashEncoder

    # Option o for steps 0-2, p for 3-5: o ends after step 2, p at the episode's end.
    episode = Episode.from_dict({"states": [f"s{i}" for i in range(6)], "actions": [f"a{i}" for i in range(6)],
                                 "options": ["o", "o", "o", "p", "p", "p"]})
    for args in (dict(max_seq_len=2), dict(max_seq_len=4, window_stride=1), dict(max_seq_len=8)):
        data = EpisodeDataset([episode], HashEncoder(4, normalize=True), progress=False, **args)
        records = collect_steps(data, batch_size=2)
        assert records.options.tolist() == [0, 0, 0, 1, 1, 1], args
        assert records.term_labels.tolist() == [0, 0, 1, 0, 0, 1], args
