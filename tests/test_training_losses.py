"""Losses, termination labels, the LR schedule and early stopping, against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from agentfast.training import (
    EarlyStopping,
    TrainConfig,
    discrete_action_loss,
    embedding_loss,
    option_loss,
    termination_labels,
    termination_loss,
    value_loss,
    warmup_cosine_factor,
)
from agentfast.models.outputs import PolicyOutputs
from agentfast.training.losses import IGNORE_INDEX, LossWeights, compute_losses


def test_termination_labels_mark_option_changes_and_the_last_step():
    options = torch.tensor([[0, 0, 1, 1, 2], [3, 3, 3, 0, 0]])
    seq_lens = torch.tensor([5, 3])
    expected = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(termination_labels(options, seq_lens), expected)



def _windowed_batch(**dataset_args):
    """All windows of one six-step episode whose option switches after step 2."""
    from agentfast.data import Episode, EpisodeDataset, collate_episodes
    from tests.fake_encoders import HashEncoder

    episode = Episode.from_dict({"states": [f"s{i}" for i in range(6)], "actions": [f"a{i}" for i in range(6)],
                                 "options": ["o", "o", "o", "p", "p", "p"]})
    data = EpisodeDataset([episode], HashEncoder(4, normalize=True), progress=False, **dataset_args)
    return collate_episodes([data[i] for i in range(len(data))])


@pytest.mark.parametrize("dataset_args, window_labels", [
    # o ends after step 2 and p at the episode's end: labels 0 0 1 0 0 1, cut into windows.
    (dict(max_seq_len=2), [[0, 0], [1, 0], [0, 1]]),
    (dict(max_seq_len=4, window_stride=1), [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]]),
])
def test_termination_loss_uses_the_episode_labels_of_each_window(dataset_args, window_labels):
    batch = _windowed_batch(**dataset_args)
    expected = torch.tensor(window_labels, dtype=torch.float32)
    logits = torch.randn(expected.shape, generator=torch.Generator().manual_seed(0))
    outputs = PolicyOutputs(action_preds=batch["actions"].clone(), option_logits=torch.zeros(*expected.shape, 2),
                           term_logits=logits)
    losses = compute_losses(outputs, batch, discrete=False, weights=LossWeights())
    counted = batch["target_mask"]
    by_hand = F.binary_cross_entropy_with_logits(logits[counted], expected[counted])
    assert losses.parts["termination_loss"].item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_whole_episodes_keep_the_labels_of_termination_labels():
    from agentfast.data import Episode, EpisodeDataset, collate_episodes
    from agentfast.training.losses import batch_termination_labels
    from tests.fake_encoders import HashEncoder

    episodes = [Episode.from_dict({"states": [f"{n}s{i}" for i in range(n)], "actions": ["a"] * n,
                                   "options": options}) for n, options in ((5, list("xxyyz")), (3, list("zzx")))]
    data = EpisodeDataset(episodes, HashEncoder(4, normalize=True), max_seq_len=8, progress=False)
    batch = collate_episodes([data[0], data[1]])
    assert torch.equal(batch_termination_labels(batch), termination_labels(batch["options"], batch["seq_lens"]))
    assert batch_termination_labels(batch).tolist() == [[0, 1, 0, 1, 1], [0, 1, 1, 0, 0]]

def test_embedding_loss_is_cosine_distance_plus_mse_over_valid_steps():
    target = F.normalize(torch.randn(2, 3, 8), dim=-1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert embedding_loss(target.clone(), target, mask).item() == pytest.approx(0.0, abs=1e-6)
    pred = -target.clone()
    pred[~mask] = 1e6  # padding must not count
    # cos = -1 -> distance 2; squared error per dim of (-2t) averages to 4 / D for unit t
    assert embedding_loss(pred, target, mask, mse_weight=1.0).item() == pytest.approx(2.0 + 4.0 / 8)
    assert embedding_loss(pred, target, mask, mse_weight=0.0).item() == pytest.approx(2.0)


def test_discrete_loss_matches_cross_entropy_on_counted_steps():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    ids = torch.tensor([[1, 4, IGNORE_INDEX], [0, IGNORE_INDEX, IGNORE_INDEX]])
    picked = torch.stack([logits[0, 0], logits[0, 1], logits[1, 0]])
    expected = F.cross_entropy(picked, torch.tensor([1, 4, 0]))
    assert discrete_action_loss(logits, ids).item() == pytest.approx(expected.item(), rel=1e-6)
    nothing = discrete_action_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    nothing.backward()  # still connected to the graph
    assert nothing.item() == 0.0 and logits.grad is not None


def test_value_option_and_termination_losses_are_masked_means():
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    returns = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert value_loss(values, returns, mask).item() == pytest.approx((1 + 4 + 4) / 3)
    logits = torch.zeros(1, 2, 4)
    assert option_loss(logits, torch.tensor([[2, 3]]), torch.tensor([[True, False]])).item() == \
        pytest.approx(math.log(4))
    term = termination_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert term.item() == pytest.approx(math.log(2))


def _batch(num_steps=3):
    return {
        "actions": torch.randn(2, num_steps, 4), "action_ids": torch.zeros(2, num_steps, dtype=torch.long),
        "valid_mask": torch.ones(2, num_steps, dtype=torch.bool), "seq_lens": torch.tensor([num_steps] * 2),
        "has_rewards": torch.tensor([True, False]), "returns_to_go": torch.ones(2, num_steps),
        "has_options": torch.tensor([False, True]), "options": torch.zeros(2, num_steps, dtype=torch.long),
    }


def test_compute_losses_combines_parts_with_their_weights():
    batch = _batch()
    outputs = PolicyOutputs(action_preds=batch["actions"].clone(), values=torch.zeros(2, 3),
                           option_logits=torch.zeros(2, 3, 2), term_logits=torch.zeros(2, 3))
    weights = LossWeights(mse=1.0, value=0.5, option=2.0, termination=3.0)
    losses = compute_losses(outputs, batch, discrete=False, weights=weights)
    parts = losses.parts
    assert parts["action_loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["value_loss"].item() == pytest.approx(1.0)  # only the rewarded row counts
    assert parts["option_loss"].item() == pytest.approx(math.log(2))
    expected = 0.5 * 1.0 + 2.0 * math.log(2) + 3.0 * math.log(2)
    assert losses.total.item() == pytest.approx(expected, rel=1e-5)


def test_warmup_then_cosine_decay_to_the_floor():
    assert warmup_cosine_factor(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, 10, 110, 0.1) == pytest.approx(0.55)  # half way down
    assert warmup_cosine_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(500, 10, 110, 0.1) == pytest.approx(0.1)


def test_early_stopping_counts_evaluations_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert stopper.update(1.0, step=10)
    assert not stopper.update(0.95, step=20)  # smaller than min_delta: not an improvement
    assert not stopper.stopped
    assert not stopper.update(0.99, step=30)
    assert stopper.stopped and stopper.best_step == 10
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored == stopper


def test_train_config_validates_and_round_trips():
    config = TrainConfig(model_type="hierarchical", model={"embed_dim": 32, "num_heads": 4})
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["embed_dim"] == 32 and config.to_dict()["num_layers"] == 2  # trainer default
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TrainConfig(model={"embed_dim": 30, "num_heads": 4})
    with pytest.raises(ValueError, match="has no field condition_on_returns"):
        TrainConfig(model_type="hierarchical", model={"condition_on_returns": True})


def test_flat_policy_settings_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="pass the policy's settings as TrainConfig"):
        flat = TrainConfig(model_type="multi_agent", embed_dim=32, num_heads=4, visibility="hub", max_steps=7)
    assert flat == TrainConfig(model_type="multi_agent", model={"embed_dim": 32, "num_heads": 4,
                                                               "visibility": "hub"}, max_steps=7)
    with pytest.warns(DeprecationWarning, match="policy_settings"):
        assert flat.visibility == "hub"
    with pytest.raises(TypeError, match="unknown settings: colour"):
        TrainConfig(colour="red")
    with pytest.raises(ValueError, match="model_type"):
        TrainConfig(model_type="transformer")
    with pytest.raises(ValueError, match="unknown training config fields: colour"):
        TrainConfig.from_dict({"colour": "red"})
