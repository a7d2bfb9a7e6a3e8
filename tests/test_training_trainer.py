"""The training loop: resume after a kill ends bitwise where the uninterrupted run ends,
early stopping restores the best weights, AMP and gradient checkpointing train."""

import pytest
import torch
from safetensors.torch import load_file

from agentfast.training import ResumableSampler, TrainConfig, Trainer, build_model
from agentfast.training.precision import cpu_supports_bf16
from tests.training_fixtures import TINY_MODEL, tiny_datasets


@pytest.fixture(scope="module")
def datasets():
    return tiny_datasets()


def _config(model_type="action", **changes):
    """A small TrainConfig; changes that name a policy setting go to its ``model``."""
    settings = dict(TINY_MODEL, dropout=0.1)
    for name in ("dropout", "gradient_checkpointing"):
        if name in changes:
            settings[name] = changes.pop(name)
    base = dict(model_type=model_type, model=settings, batch_size=4, max_steps=12, eval_every=4,
                warmup_steps=3, learning_rate=3e-3, deterministic=True, seed=3, patience=0)
    base.update(changes)
    return TrainConfig(**base)


def _trainer(datasets, config, output_dir=None, model_seed=0, **kwargs):
    train, val = datasets
    torch.manual_seed(model_seed)
    model = build_model(config, state_dim=train.state_dim, action_dim=train.action_dim,
                        num_agents=train.num_agents, num_options=train.num_options)
    return Trainer(model, config, train, val, output_dir=output_dir, progress=False, **kwargs)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["action", "hierarchical"])
def test_resumed_run_ends_bitwise_where_the_uninterrupted_run_ends(tmp_path, datasets, model_type):
    config = _config(model_type=model_type)
    # 12 steps cross epoch boundaries (the train set is 6 batches); 7 is mid-epoch and not
    # an evaluation step, so the kill-time save is the only checkpoint at that point.
    full = _trainer(datasets, config, tmp_path / "full")
    full_result = full.train()
    killed = _trainer(datasets, config, tmp_path / "resumed", stop_after_step=7)
    killed_result = killed.train()
    assert killed_result.stopped_by_request and killed_result.steps == 7
    # A fresh process: a differently initialised model, the RNG elsewhere.
    resumed = _trainer(datasets, config, tmp_path / "resumed", model_seed=123)
    torch.manual_seed(999)
    resumed_result = resumed.train(resume=True)
    assert resumed_result.steps == full_result.steps == 12
    assert resumed_result.best_step == full_result.best_step
    assert resumed_result.best_val_loss == full_result.best_val_loss
    for name, tensor in _weights(full).items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    last_full = load_file(str(tmp_path / "full/checkpoints/step-00000012/model.safetensors"))
    last_resumed = load_file(str(tmp_path / "resumed/checkpoints/step-00000012/model.safetensors"))
    assert all(torch.equal(last_full[k], last_resumed[k]) for k in last_full)


def test_early_stopping_stops_and_restores_the_best_weights(tmp_path, datasets):
    # min_delta so large that only the first evaluation counts as an improvement.
    config = _config(max_steps=40, patience=2, min_delta=1e9)
    trainer = _trainer(datasets, config, tmp_path)
    result = trainer.train()
    assert result.stopped_early and result.steps == 12  # evaluations at 4, 8, 12
    assert result.best_step == 4
    best = load_file(str(tmp_path / "checkpoints/step-00000012/best_model.safetensors"))
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, best[name]), name
    assert [h["step"] for h in result.history] == [4, 8, 12]


def test_validation_loss_drops_while_training(datasets):
    trainer = _trainer(datasets, _config(max_steps=30, eval_every=10, dropout=0.0))
    before = trainer.validation_loss()["loss"]
    result = trainer.train()
    assert result.best_val_loss < 0.8 * before


def _autocast_dtypes(trainer):
    seen = []
    hook = trainer.model.state_embed.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen, hook


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_autocast_trains_on_cpu(datasets):
    trainer = _trainer(datasets, _config(max_steps=6, precision="bf16", dropout=0.0))
    seen, hook = _autocast_dtypes(trainer)
    result = trainer.train()
    hook.remove()
    assert trainer.precision == "bf16" and trainer.scaler is None
    assert torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights
    assert result.last_train_loss is not None and result.best_val_loss < 10


def test_fp16_autocast_uses_a_grad_scaler(datasets):
    trainer = _trainer(datasets, _config(max_steps=6, precision="fp16", dropout=0.0))
    seen, hook = _autocast_dtypes(trainer)
    before = _weights(trainer)
    trainer.train()
    hook.remove()
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    assert torch.float16 in seen
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the scaler did not skip every step


def test_gradient_checkpointing_gives_the_same_training(datasets):
    plain = _trainer(datasets, _config(max_steps=3, dropout=0.0))
    plain.train()
    checkpointed = _trainer(datasets, _config(max_steps=3, dropout=0.0, gradient_checkpointing=True))
    assert checkpointed.model.gradient_checkpointing
    checkpointed.train()
    for name, tensor in plain.model.state_dict().items():
        torch.testing.assert_close(checkpointed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_sampler_shards_cover_the_epoch_and_resume_mid_epoch():
    shards = [list(ResumableSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded to 12 = 3 x 4
    assert set(sum(shards, [])) == set(range(10))
    sampler = ResumableSampler(10, seed=1)
    sampler.set_position(epoch=2, skip=4)
    whole = ResumableSampler(10, seed=1)
    whole.set_position(epoch=2)
    assert list(sampler) == list(whole)[4:]
    other_epoch = ResumableSampler(10, seed=1)
    assert list(other_epoch) != list(whole)


def test_multi_agent_validation_reports_the_action_loss_per_agent(datasets):
    trainer = _trainer(datasets, _config(model_type="multi_agent", max_steps=2))
    metrics = trainer.validation_loss()
    per_agent = {k: v for k, v in metrics.items() if k.startswith("action_loss_agent")}
    train, val = datasets
    acting = sorted({int(a) for item in val for a in item["agent_ids"].tolist()})
    assert sorted(per_agent) == [f"action_loss_agent{a}" for a in acting] and len(acting) > 1
    # The per-agent losses, weighted by each agent's step count, give back the overall loss.
    counts = {a: sum(int((item["agent_ids"] == a).sum()) for item in val) for a in acting}
    weighted = sum(per_agent[f"action_loss_agent{a}"] * n for a, n in counts.items()) / sum(counts.values())
    assert weighted == pytest.approx(metrics["action_loss"], rel=1e-4)
