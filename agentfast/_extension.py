"""Loading the compiled extension ``agentfast._C`` without ever crashing an import.

``load()`` returns the module or ``None``; ``load_error()`` says why it is missing. A missing or
mismatched build warns once, naming the build's and the runtime's torch/CUDA versions.
"""

from __future__ import annotations

import functools
import importlib
import json
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

_BUILD_INFO = Path(__file__).with_name("_build_info.json")
_error: str | None = None


def build_info() -> dict[str, Any]:
    """What the build recorded next to the extension after building it ({} if none here)."""
    try:
        return json.loads(_BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


def runtime_info() -> dict[str, Any]:
    import torch

    return {"torch_version": torch.__version__, "torch_cuda_version": torch.version.cuda}


def _describe_mismatch() -> str:
    built, running = build_info(), runtime_info()
    return (
        f"built against torch {built.get('torch_version', '?')} "
        f"(CUDA {built.get('torch_cuda_version', '?')}), running torch "
        f"{running['torch_version']} (CUDA {running['torch_cuda_version']})"
    )


@functools.lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Import agentfast._C (which registers the agentfast:: ops) or return None with a warning."""
    global _error
    import torch  # the extension links against libtorch: load it first

    _error = None

    try:
        module = importlib.import_module("agentfast._C")
    except ImportError as exc:
        built = build_info()
        if not built:
            _error = f"agentfast._C is not built ({exc}); reinstall with `pip install --no-build-isolation -e .`"
        elif built.get("torch_version") != torch.__version__:
            _error = f"agentfast._C does not match this torch: {_describe_mismatch()}; rebuild it ({exc})"
        else:
            _error = f"agentfast._C failed to load: {exc} [{_describe_mismatch()}]"
        warnings.warn(_error, RuntimeWarning, stacklevel=2)
        return None
    built_with = build_info().get("torch_version")
    if built_with is not None and built_with != torch.__version__:
        # It loaded, so the ABI is close enough to link; still, kernels built against another
        # torch are untested with this one.
        warnings.warn(f"agentfast._C does not match this torch: {_describe_mismatch()}; rebuild it with "
                      "`pip install --no-build-isolation -e .`", RuntimeWarning, stacklevel=2)
    return module


def load_error() -> str | None:
    load()
    return _error


def has_cuda_kernels() -> bool:
    """Whether the loaded extension holds CUDA kernels (asked of the module, not the record)."""
    module = load()
    return module is not None and bool(module.built_with_cuda())
