"""One registry of policies: a fourth policy is one class with its config dataclass plus one
``register_policy`` line, and the trainer, saving and loading, and the command line take it
as they take the built-in three."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import pytest
import torch
from torch import Tensor, nn

from agentfast.models import load_pretrained
from agentfast.models.backbone import SequencePolicy, check_seq_lens, valid_steps
from agentfast.models.config import PolicyConfig, setting
from agentfast.models.outputs import PolicyOutputs
from agentfast.models.registry import model_types, policy_class, register_policy, unregister_policy
from agentfast.training import TrainConfig, Trainer, build_model
from tests.training_fixtures import TINY_MODEL, tiny_datasets


@dataclass(kw_only=True, eq=False)
class StateOnlyConfig(PolicyConfig):
    model_type: ClassVar[str] = "state_only"

    state_scale: float = setting(1.0, help="factor on the state embeddings")


class StateOnlyPolicy(SequencePolicy):
    """Predicts each step's action from the states so far (one token a step)."""

    config_class = StateOnlyConfig
    tokens_per_step = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.action_head = nn.Linear(self.config.embed_dim, self.config.action_dim)
        self._init_weights()

    def forward(self, states: Tensor, seq_lens: Tensor | None = None) -> Tensor:
        batch, steps = self._batch_and_steps(states)
        seq_lens = check_seq_lens(seq_lens, batch, steps, states.device)
        tokens = self._embed_states(states, batch, steps, valid_steps(seq_lens, batch, steps, states.device))
        return self.action_head(self.backbone(tokens * self.config.state_scale, seq_lens=seq_lens))

    def forward_batch(self, batch: Mapping[str, Any], *, module: nn.Module | None = None) -> PolicyOutputs:
        return PolicyOutputs(action_preds=(module or self)(batch["states"], seq_lens=batch["seq_lens"]))


@pytest.fixture
def registered():
    register_policy(StateOnlyConfig, StateOnlyPolicy)
    yield
    unregister_policy("state_only")


def test_a_fourth_policy_trains_saves_loads_and_has_options(registered, tmp_path, capsys):
    assert "state_only" in model_types() and policy_class("state_only") is StateOnlyPolicy
    config = TrainConfig(model_type="state_only", model=dict(TINY_MODEL, state_scale=2.0, dropout=0.0),
                         max_steps=1, batch_size=4, eval_every=1, warmup_steps=0, learning_rate=1e-2)
    train, val = tiny_datasets()
    torch.manual_seed(0)
    model = build_model(config, state_dim=train.state_dim, action_dim=train.action_dim)
    assert isinstance(model, StateOnlyPolicy) and model.config.state_scale == 2.0
    before = model.action_head.weight.detach().clone()
    result = Trainer(model, config, train, val, output_dir=tmp_path / "run", progress=False).train()
    assert result.steps == 1 and result.best_val_loss is not None
    assert not torch.equal(model.action_head.weight, before)  # the step changed the policy

    model.save_pretrained(tmp_path / "policy")
    loaded = load_pretrained(tmp_path / "policy").model
    assert type(loaded) is StateOnlyPolicy and loaded.config == model.config
    states = torch.randn(2, 3, train.state_dim)
    assert torch.equal(loaded(states), model.eval()(states))

    from agentfast.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "state_only" in help_text
    assert "--state-scale STATE_SCALE factor on the state embeddings (--model state_only only) (default: 1.0)" in help_text


def test_a_model_type_is_registered_once(registered):
    @dataclass(kw_only=True, eq=False)
    class Impostor(PolicyConfig):
        model_type: ClassVar[str] = "state_only"

    with pytest.raises(ValueError, match="'state_only' is registered already, by StateOnlyConfig"):
        register_policy(Impostor, StateOnlyPolicy)
    with pytest.raises(ValueError, match="unknown model type 'nothing'; known: "):
        policy_class("nothing")
