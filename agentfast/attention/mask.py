"""The attention mask rule of the contract, in its two shapes.

Query ``i`` sits at global key position ``p = Nk - Nq + i`` (bottom-right alignment) and may
attend key ``j`` iff ``(not causal or j <= p)``, ``j < seq_lens[b]`` and, with agents,
``visibility[b, agent_ids[b, p], agent_ids[b, j]]``.

Dense backends (reference, sdpa) materialise this rule as a boolean ``[B, 1, Nq, Nk]`` mask;
kernels receive the visibility as an int64 bitmask ``[B, A]`` (bit ``c`` of row ``a`` = ``a``
sees ``c``), which ``agentfast.visibility.visibility_to_bitmask`` produces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._lazy import moved_names
from ..visibility import visibility_between

# Agent visibility (its bitmasks and the agent limit) lives in agentfast.visibility.
__getattr__ = moved_names(__name__, {
    "MAX_AGENTS": "agentfast.visibility",
    "visibility_to_bitmask": "agentfast.visibility",
    "bitmask_to_visibility": "agentfast.visibility",
})


def dense_mask(
    batch: int,
    num_queries: int,
    num_keys: int,
    device: torch.device,
    *,
    causal: bool,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    visibility: Tensor | None = None,
) -> Tensor:
    """Materialise the contract's rule as bool ``[B, 1, Nq, Nk]`` (True = may attend).

    ``visibility`` must already be expanded to ``[B, A, A]``.
    """
    key_pos = torch.arange(num_keys, device=device)
    query_pos = key_pos[num_keys - num_queries :]
    allowed = torch.ones(batch, num_queries, num_keys, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & (key_pos[None, :] <= query_pos[:, None])
    if seq_lens is not None:
        allowed = allowed & (key_pos[None, None, :] < seq_lens.to(device)[:, None, None])
    if visibility is not None:
        assert agent_ids is not None
        allowed = allowed & visibility_between(visibility, agent_ids[:, num_keys - num_queries :], agent_ids)
    return allowed.unsqueeze(1)
