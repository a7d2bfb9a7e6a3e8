"""Build any of the three models from a TrainConfig and call it on a collated batch."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from .._lazy import moved_names
from ..models.registry import policy_class
from .config import TrainConfig
from .losses import ModelOutputs

def model_constructor_args(config: TrainConfig, *, state_dim: int, action_dim: int,
                           num_agents: int = 1, num_options: int = 1) -> dict[str, Any]:
    """Constructor arguments for ``config.model_type``, filtered to what the class accepts."""
    cls = policy_class(config.model_type)
    candidates = {
        "state_dim": state_dim,
        "action_dim": action_dim,
        "embed_dim": config.embed_dim,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "hidden_dim": config.hidden_dim,
        "max_seq_len": config.max_seq_len,
        "discrete_actions": config.discrete_actions,
        "dropout": config.dropout,
        "attn_backend": config.attn_backend,
        "gradient_checkpointing": config.gradient_checkpointing,
        "max_num_agents": max(1, num_agents),
        "num_options": max(1, num_options),
    }
    check_model_options(config)
    accepted = inspect.signature(cls.__init__).parameters
    return {name: value for name, value in candidates.items() if name in accepted}


def check_model_options(config: TrainConfig) -> None:
    """Refuse options that ``config.model_type`` would silently ignore."""
    cls = policy_class(config.model_type)
    if config.discrete_actions and "discrete_actions" not in inspect.signature(cls.__init__).parameters:
        raise ValueError(f"{cls.__name__} does not support discrete actions")
    if config.condition_on_returns and "returns_to_go" not in inspect.signature(cls.forward).parameters:
        raise ValueError(f"--condition-on-returns needs a model that takes returns-to-go "
                         f"(--model action); {cls.__name__} (--model {config.model_type}) "
                         "does not")


def build_model(config: TrainConfig, *, state_dim: int, action_dim: int, num_agents: int = 1,
                num_options: int = 1) -> nn.Module:
    args = model_constructor_args(config, state_dim=state_dim, action_dim=action_dim,
                                  num_agents=num_agents, num_options=num_options)
    return policy_class(config.model_type)(**args)


# The visibility settings moved to agentfast.visibility (one home for agent visibility).
__getattr__ = moved_names(__name__, {
    "VISIBILITY_CHOICES": "agentfast.visibility:SETTINGS",
    "visibility_mask": "agentfast.visibility:setting_visibility",
})


def move_batch(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Tensors to ``device``; lists (task types) stay as they are."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
            for k, v in batch.items()}


def model_actions(batch: dict[str, Any], discrete: bool) -> Tensor:
    """The action input: embeddings, or ids with padding (-100) mapped to a valid id."""
    if discrete:
        return batch["action_ids"].clamp_min(0)
    return batch["actions"]


def forward_batch(model: nn.Module, model_type: str, batch: dict[str, Any], *, discrete: bool,
                  agent_mask: Tensor | None = None, condition_on_returns: bool = False,
                  visibility_from_data: bool = False) -> ModelOutputs:
    """Run ``model`` (possibly DDP-wrapped) on a collated batch; name its outputs uniformly."""
    actions = model_actions(batch, discrete)
    if model_type == "action":
        returns = batch["returns_to_go"] if condition_on_returns else None
        action_preds, values = model(batch["states"], actions, seq_lens=batch["seq_lens"],
                                     returns_to_go=returns)
        return ModelOutputs(action_preds=action_preds, values=values)
    if model_type == "multi_agent":
        if agent_mask is None and visibility_from_data:
            agent_mask = batch.get("agent_mask")
        action_preds, values, hidden = model(batch["states"], batch["agent_ids"], actions,
                                             seq_lens=batch["seq_lens"], agent_mask=agent_mask)
        return ModelOutputs(action_preds=action_preds, values=values, hidden_states=hidden)
    if model_type == "hierarchical":
        option_preds, action_preds, term_preds = model(batch["states"], actions, batch["options"],
                                                       seq_lens=batch["seq_lens"])
        return ModelOutputs(action_preds=action_preds, option_logits=option_preds,
                            term_logits=term_preds)
    raise ValueError(f"unknown model type {model_type!r}")
