"""agentfast: transformer policies trained on LLM agent logs, with fused masked attention.

Importing agentfast is cheap: it imports no torch, does not initialise CUDA, load the
compiled extension or import triton/transformers. Models, data and training load on first
attribute access; ``agentfast.attention(...)`` loads torch and the backends at its first call.
"""

from __future__ import annotations

from ._lazy import lazy_exports
from ._version import __version__
from .attention import attention

# Subpackages (nn, models, data, training, pipeline, kernels, ...) load on first access too.
_EXPORTS = {
    "ActionTransformer": "agentfast.models",
    "MultiAgentTransformer": "agentfast.models",
    "HierarchicalTransformer": "agentfast.models",
    "AgentPipeline": "agentfast.pipeline",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["attention", "__version__", *_EXPORTS, "nn", "models", "data", "training", "kernels"]
