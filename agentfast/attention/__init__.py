"""Masked attention: one contract (``attention``), many backends."""

from ..visibility import bitmask_to_visibility, visibility_to_bitmask
from .api import (
    AttentionInputError,
    BackendUnavailableError,
    attention,
    explain,
    make_call,
    select_backend,
)
from .backends import backend_names, get_backend
from .mask import dense_mask
from .reference import reference_attention

__all__ = [
    "AttentionInputError",
    "BackendUnavailableError",
    "attention",
    "backend_names",
    "bitmask_to_visibility",
    "dense_mask",
    "explain",
    "get_backend",
    "make_call",
    "reference_attention",
    "select_backend",
    "visibility_to_bitmask",
]
