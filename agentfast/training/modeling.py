"""Build the policy a TrainConfig names for the sizes of its data; move batches to a device.

How a policy reads a batch is the policy's own business (``model.forward_batch``); the
trainer and the evaluation call that hook and never branch on the model type.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._lazy import moved_names
from ..models.outputs import PolicyOutputs
from ..models.policy_files import unwrap
from ..models.registry import policy_entry
from ..visibility import FROM_DATA, setting_visibility
from .config import TrainConfig

# The visibility settings moved to agentfast.visibility (one home for agent visibility).
__getattr__ = moved_names(__name__, {
    "VISIBILITY_CHOICES": "agentfast.visibility:SETTINGS",
    "visibility_mask": "agentfast.visibility:setting_visibility",
})


def data_sizes(*, state_dim: int, action_dim: int, num_agents: int = 1, num_options: int = 1) -> dict[str, int]:
    """The sizes a policy takes from its data (``agentfast.models.config.DATA_SIZES``)."""
    return {"state_dim": state_dim, "action_dim": action_dim,
            "num_agents": max(1, num_agents), "num_options": max(1, num_options)}


def build_model(config: TrainConfig, *, state_dim: int, action_dim: int, num_agents: int = 1,
                num_options: int = 1) -> nn.Module:
    """The policy of ``config`` (its settings over the trainer defaults) for data of these
    sizes; ``action_dim`` is the number of known actions for discrete actions."""
    entry = policy_entry(config.model_type)
    sizes = data_sizes(state_dim=state_dim, action_dim=action_dim, num_agents=num_agents,
                       num_options=num_options)
    return entry.policy_class(config=entry.config_class.for_data(config.model, sizes))


def move_batch(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Tensors to ``device``; lists (task types) stay as they are."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
            for k, v in batch.items()}


def forward_batch(model: nn.Module, model_type: str, batch: dict[str, Any], *, discrete: bool,
                  agent_mask: Tensor | None = None, condition_on_returns: bool = False,
                  visibility_from_data: bool = False) -> PolicyOutputs:
    """Deprecated: ``model.forward_batch(batch)``, where the policy's config decides what the
    keyword arguments here used to say. They must agree with it."""
    warnings.warn("agentfast.training.forward_batch(model, model_type, batch, ...) is deprecated: "
                  "call the policy's own model.forward_batch(batch)", DeprecationWarning, stacklevel=2)
    policy = unwrap(model)
    config = policy.config
    disagreements = [name for name, given, own in [
        ("discrete", discrete, config.discrete_actions),
        ("condition_on_returns", condition_on_returns, config.get("condition_on_returns", False)),
    ] if bool(given) != bool(own)]
    if policy.uses_agents:
        from_data = config.visibility == FROM_DATA
        implied = None if from_data else setting_visibility(config.visibility, config.max_num_agents)
        if bool(visibility_from_data) != from_data:
            disagreements.append("visibility_from_data")
        if (agent_mask is None) != (implied is None) or (
                implied is not None and not torch.equal(agent_mask.cpu(), implied)):
            disagreements.append("agent_mask")
    if disagreements:
        raise ValueError(f"forward_batch: {', '.join(disagreements)} disagree with the {model_type} "
                         "policy's own config, which now decides them")
    return policy.forward_batch(batch, module=model)
