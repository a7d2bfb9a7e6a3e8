"""agentfast: transformer policies trained on LLM agent logs, with fused masked attention.

Importing agentfast is cheap: it does not initialise CUDA, load the compiled extension or
import triton/transformers. Models, data and training load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .attention import attention


_LAZY = {
    "ActionTransformer": "agentfast.models",
    "MultiAgentTransformer": "agentfast.models",
    "HierarchicalTransformer": "agentfast.models",
    "AgentPipeline": "agentfast.pipeline",
    "nn": "agentfast.nn",
    "models": "agentfast.models",
    "data": "agentfast.data",
    "training": "agentfast.training",
    "kernels": "agentfast.kernels",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'agentfast' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__.endswith(name) else getattr(module, name)
    globals()[name] = value
    return value


__all__ = ["attention", "__version__", *_LAZY]
