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

from .._lazy import lazy_exports

_EXPORTS = {
    "visibility_preset": "agentfast.visibility",
    "ActionTransformer": ".action_transformer",
    "SequencePolicy": ".backbone",
    "TransformerBackbone": ".backbone",
    "TransformerBlock": ".backbone",
    "ActionTransformerConfig": ".config",
    "HierarchicalTransformerConfig": ".config",
    "MultiAgentTransformerConfig": ".config",
    "PolicyConfig": ".config",
    "HierarchicalTransformer": ".hierarchical",
    "KVCache": ".kv_cache",
    "MultiAgentTransformer": ".multi_agent",
    "PolicyOutputs": ".outputs",
    "CheckpointError": ".policy_files",
    "read_pretrained_config": ".policy_files",
    "PretrainedPolicy": ".pretrained",
    "load_pretrained": ".pretrained",
    "save_pretrained": ".pretrained",
    "POLICIES": ".registry",
    "policy_class": ".registry",
    "register_policy": ".registry",
}
__all__ = sorted(_EXPORTS)
_exported = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "MODEL_CLASSES":
        warnings.warn("agentfast.models.MODEL_CLASSES is replaced by agentfast.models.POLICIES "
                      "(model type -> config class and policy class); the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        from .registry import POLICIES

        classes = [entry.policy_class for entry in POLICIES.values()]
        return {cls.__name__: cls for cls in classes}
    return _exported(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
