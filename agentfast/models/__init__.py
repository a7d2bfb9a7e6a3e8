"""The agentfast policies over one shared transformer backbone, and their files.

``ActionTransformer`` (one agent), ``MultiAgentTransformer`` (several agents with a
visibility matrix, see ``visibility_preset``) and ``HierarchicalTransformer`` (options over
actions). Each is configured by one dataclass (``ActionTransformerConfig``, ...; its fields
are the constructor's arguments, ``model.config`` holds it), has ``model.new_cache(...)``
and step methods for KV-cache inference, and ``save_pretrained`` / ``from_pretrained``.
``load_pretrained`` loads a saved policy of any type in the registry (``POLICIES``;
``register_policy`` adds one).
"""

import warnings
from typing import Any

from ..visibility import visibility_preset
from .action_transformer import ActionTransformer
from .backbone import SequencePolicy, TransformerBackbone, TransformerBlock
from .config import (
    ActionTransformerConfig,
    HierarchicalTransformerConfig,
    MultiAgentTransformerConfig,
    PolicyConfig,
)
from .hierarchical import HierarchicalTransformer
from .kv_cache import KVCache
from .multi_agent import MultiAgentTransformer
from .outputs import PolicyOutputs
from .policy_files import CheckpointError, read_pretrained_config
from .pretrained import PretrainedPolicy, load_pretrained, save_pretrained
from .registry import POLICIES, policy_class, register_policy


def __getattr__(name: str) -> Any:
    if name == "MODEL_CLASSES":
        warnings.warn("agentfast.models.MODEL_CLASSES is replaced by agentfast.models.POLICIES "
                      "(model type -> config class and policy class); the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        classes = [entry.policy_class for entry in POLICIES.values()]
        return {cls.__name__: cls for cls in classes}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "POLICIES",
    "ActionTransformer",
    "ActionTransformerConfig",
    "CheckpointError",
    "HierarchicalTransformer",
    "HierarchicalTransformerConfig",
    "KVCache",
    "MultiAgentTransformer",
    "MultiAgentTransformerConfig",
    "PolicyConfig",
    "PolicyOutputs",
    "PretrainedPolicy",
    "SequencePolicy",
    "TransformerBackbone",
    "TransformerBlock",
    "load_pretrained",
    "policy_class",
    "read_pretrained_config",
    "register_policy",
    "save_pretrained",
    "visibility_preset",
]
