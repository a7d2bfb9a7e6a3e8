"""The three agentfast policies over one shared transformer backbone.

``ActionTransformer`` (one agent), ``MultiAgentTransformer`` (several agents with a
visibility matrix, see ``visibility_preset``) and ``HierarchicalTransformer`` (options over
actions). Each has ``model.config`` (its constructor arguments), ``model.new_cache(...)``
and step methods for KV-cache inference.
"""

from .action_transformer import ActionTransformer
from .backbone import SequencePolicy, TransformerBackbone, TransformerBlock
from .hierarchical import HierarchicalTransformer
from .kv_cache import KVCache
from .multi_agent import MultiAgentTransformer, visibility_preset

MODEL_CLASSES = {
    "ActionTransformer": ActionTransformer,
    "MultiAgentTransformer": MultiAgentTransformer,
    "HierarchicalTransformer": HierarchicalTransformer,
}

__all__ = [
    "ActionTransformer",
    "HierarchicalTransformer",
    "KVCache",
    "MODEL_CLASSES",
    "MultiAgentTransformer",
    "SequencePolicy",
    "TransformerBackbone",
    "TransformerBlock",
    "visibility_preset",
]
