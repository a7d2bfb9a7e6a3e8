"""The one registry of policies: model type name -> policy class.

Everything that needs to know which policies exist (saving and loading, the trainer, the
command line) asks here; nothing else branches on a model type name.
"""

from __future__ import annotations

from torch import nn

from .action_transformer import ActionTransformer
from .hierarchical import HierarchicalTransformer
from .multi_agent import MultiAgentTransformer

POLICIES: dict[str, type[nn.Module]] = {
    cls.model_type: cls for cls in (ActionTransformer, MultiAgentTransformer, HierarchicalTransformer)
}


def policy_class(model_type: str) -> type[nn.Module]:
    """The class registered as ``model_type``; ValueError listing the known ones otherwise."""
    try:
        return POLICIES[model_type]
    except KeyError:
        raise ValueError(f"unknown model type {model_type!r}; known: {sorted(POLICIES)}") from None


def model_type_of(model: nn.Module) -> str:
    """The registered name of ``model``'s class; TypeError for a class that is not a policy."""
    for name, cls in POLICIES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"{type(model).__name__} is none of agentfast's policy classes "
                    f"({', '.join(cls.__name__ for cls in POLICIES.values())})")
