"""Registry of attention backends.

Each backend lives in its own module and is imported on first use, so that importing
agentfast never pulls in triton or loads the compiled extension. A backend whose module
cannot be imported is still listed, with the import error as its reason. Listing the
names imports nothing (not even torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..._lazy import lazy_exports

if TYPE_CHECKING:
    from .base import AttentionBackend

__getattr__ = lazy_exports(__name__, {"AttentionBackend": ".base", "AttentionCall": ".base"})

# name -> loader. Order is the order `agentfast info` lists them in. Plain import statements
# rather than importlib: torch.compile can trace these when a call is compiled first.
def _reference() -> AttentionBackend:
    from .reference_backend import BACKEND
    return BACKEND


def _sdpa() -> AttentionBackend:
    from .sdpa import BACKEND
    return BACKEND


def _flex() -> AttentionBackend:
    from .flex import BACKEND
    return BACKEND


def _triton() -> AttentionBackend:
    from .triton_fused import BACKEND
    return BACKEND


def _cuda() -> AttentionBackend:
    from .extension import CUDA_BACKEND
    return CUDA_BACKEND


def _cpp() -> AttentionBackend:
    from .extension import CPP_BACKEND
    return CPP_BACKEND


_LOADERS: dict[str, Callable[[], AttentionBackend]] = {
    "reference": _reference,
    "sdpa": _sdpa,
    "flex": _flex,
    "triton": _triton,
    "cuda": _cuda,
    "cpp": _cpp,
}
_loaded: dict[str, AttentionBackend] = {}


def backend_names() -> list[str]:
    return list(_LOADERS)


def get_backend(name: str) -> AttentionBackend:
    """The backend called ``name``; raises ValueError listing the valid names otherwise."""
    if name not in _LOADERS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {['auto', *_LOADERS]}")
    if name not in _loaded:
        try:
            _loaded[name] = _LOADERS[name]()
        except Exception as exc:  # a broken optional backend must not break the others
            from .base import UnimportableBackend

            _loaded[name] = UnimportableBackend(name, exc)
    return _loaded[name]


__all__ = ["AttentionBackend", "AttentionCall", "backend_names", "get_backend"]
