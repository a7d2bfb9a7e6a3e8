"""Registry of attention backends.

Each backend lives in its own module and is imported on first use, so that importing
agentfast never pulls in triton or loads the compiled extension. A backend whose module
cannot be imported is still listed, with the import error as its reason.
"""

from __future__ import annotations

import importlib

from .base import AttentionBackend, AttentionCall

# name -> (module, attribute). Order is the order `agentfast info` lists them in.
_LOCATIONS: dict[str, tuple[str, str]] = {
    "reference": ("reference_backend", "BACKEND"),
    "sdpa": ("sdpa", "BACKEND"),
    "flex": ("flex", "BACKEND"),
    "triton": ("triton_fused", "BACKEND"),
    "cuda": ("extension", "CUDA_BACKEND"),
    "cpp": ("extension", "CPP_BACKEND"),
}
_loaded: dict[str, AttentionBackend] = {}


class _Unimportable(AttentionBackend):
    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name
        self._error = error

    def unavailable_reason(self) -> str | None:
        return f"its module failed to import: {type(self._error).__name__}: {self._error}"


def backend_names() -> list[str]:
    return list(_LOCATIONS)


def get_backend(name: str) -> AttentionBackend:
    """The backend called ``name``; raises ValueError listing the valid names otherwise."""
    if name not in _LOCATIONS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {['auto', *_LOCATIONS]}")
    if name not in _loaded:
        module_name, attribute = _LOCATIONS[name]
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
            _loaded[name] = getattr(module, attribute)
        except Exception as exc:  # a broken optional backend must not break the others
            _loaded[name] = _Unimportable(name, exc)
    return _loaded[name]


__all__ = ["AttentionBackend", "AttentionCall", "backend_names", "get_backend"]
