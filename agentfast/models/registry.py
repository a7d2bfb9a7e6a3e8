"""The one registry of policies: model type -> (configuration class, policy class).

Everything that needs to know which policies exist asks here: saving and loading, the
trainer, the evaluation, the command line. Nothing else branches on a model type; each
policy class handles its own batches and inference steps. A new policy is one new module
(its config dataclass and its class) plus one ``register_policy`` line.

Policy classes are named by import path and loaded on first use, so reading the registry
(the command line building its options) imports no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import (
    ActionTransformerConfig,
    HierarchicalTransformerConfig,
    MultiAgentTransformerConfig,
    PolicyConfig,
)

if TYPE_CHECKING:
    from torch import nn


@dataclass
class PolicyEntry:
    """A registered policy: its configuration class and its class (or the class's path)."""

    config_class: type[PolicyConfig]
    policy: type[nn.Module] | str = field(repr=False)

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def policy_class(self) -> type[nn.Module]:
        if isinstance(self.policy, str):
            module, _, name = self.policy.partition(":")
            self.policy = getattr(importlib.import_module(module), name)
        return self.policy


POLICIES: dict[str, PolicyEntry] = {}


def register_policy(config_class: type[PolicyConfig], policy: type[nn.Module] | str) -> None:
    """Register ``policy`` (a class, or ``"module:Class"``) under ``config_class.model_type``."""
    name = config_class.model_type
    if not name:
        raise ValueError(f"{config_class.__name__} sets no model_type to register it under")
    if name in POLICIES and POLICIES[name].config_class is not config_class:
        raise ValueError(f"model type {name!r} is registered already, by "
                         f"{POLICIES[name].config_class.__name__}")
    POLICIES[name] = PolicyEntry(config_class, policy)


def unregister_policy(model_type: str) -> None:
    POLICIES.pop(model_type, None)


def policy_entry(model_type: str) -> PolicyEntry:
    """The entry of ``model_type``; ValueError listing the known model types otherwise."""
    try:
        return POLICIES[model_type]
    except KeyError:
        raise ValueError(f"unknown model type {model_type!r}; known: {sorted(POLICIES)}") from None


def policy_class(model_type: str) -> type[nn.Module]:
    return policy_entry(model_type).policy_class


def model_types() -> tuple[str, ...]:
    return tuple(POLICIES)


def model_type_of(model: Any) -> str:
    """The registered model type of ``model``'s class; TypeError for anything else."""
    config = getattr(model, "config", None)
    if isinstance(config, PolicyConfig) and config.model_type in POLICIES:
        return config.model_type
    raise TypeError(f"{type(model).__name__} is none of agentfast's policy classes "
                    f"({', '.join(sorted(POLICIES))})")


register_policy(ActionTransformerConfig, "agentfast.models.action_transformer:ActionTransformer")
register_policy(MultiAgentTransformerConfig, "agentfast.models.multi_agent:MultiAgentTransformer")
register_policy(HierarchicalTransformerConfig, "agentfast.models.hierarchical:HierarchicalTransformer")
