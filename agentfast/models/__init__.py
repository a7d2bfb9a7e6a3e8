"""The three agentfast policies over one shared transformer backbone, and their files.

``ActionTransformer`` (one agent), ``MultiAgentTransformer`` (several agents with a
visibility matrix, see ``visibility_preset``) and ``HierarchicalTransformer`` (options over
actions). Each has ``model.config`` (its constructor arguments), ``model.new_cache(...)``
and step methods for KV-cache inference, and ``save_pretrained`` / ``from_pretrained``.
``load_pretrained`` loads a saved policy of any registered type (``registry.POLICIES``).
"""

import warnings
from typing import Any

from ..visibility import visibility_preset
from .action_transformer import ActionTransformer
from .backbone import SequencePolicy, TransformerBackbone, TransformerBlock
from .hierarchical import HierarchicalTransformer
from .kv_cache import KVCache
from .multi_agent import MultiAgentTransformer
from .policy_files import CheckpointError, read_pretrained_config
from .pretrained import PretrainedPolicy, load_pretrained, save_pretrained
from .registry import POLICIES, policy_class


def __getattr__(name: str) -> Any:
    if name == "MODEL_CLASSES":
        warnings.warn("agentfast.models.MODEL_CLASSES is replaced by agentfast.models.POLICIES "
                      "(model type -> class); the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        return {cls.__name__: cls for cls in POLICIES.values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "POLICIES",
    "ActionTransformer",
    "CheckpointError",
    "HierarchicalTransformer",
    "KVCache",
    "MultiAgentTransformer",
    "PretrainedPolicy",
    "SequencePolicy",
    "TransformerBackbone",
    "TransformerBlock",
    "load_pretrained",
    "policy_class",
    "read_pretrained_config",
    "save_pretrained",
    "visibility_preset",
]
