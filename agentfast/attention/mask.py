"""The attention mask rule of the contract, in its two shapes.

Query ``i`` sits at global key position ``p = Nk - Nq + i`` (bottom-right alignment) and may
attend key ``j`` iff ``(not causal or j <= p)``, ``j < seq_lens[b]`` and, with agents,
``visibility[b, agent_ids[b, p], agent_ids[b, j]]``.

Dense backends (reference, sdpa) materialise this rule as a boolean ``[B, 1, Nq, Nk]`` mask;
kernels receive the visibility as an int64 bitmask ``[B, A]`` (bit ``c`` of row ``a`` = ``a``
sees ``c``), which is what ``visibility_to_bitmask`` produces.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_AGENTS = 64


def visibility_to_bitmask(visibility: Tensor) -> Tensor:
    """Pack a bool visibility ``[B, A, A]`` into int64 ``[B, A]``; bit c of row a = a sees c.

    Bit 63 lands in the sign bit; kernels read the mask as unsigned bits, so that is fine.
    """
    num_agents = visibility.shape[-1]
    bits = torch.ones((), dtype=torch.int64, device=visibility.device) << torch.arange(
        num_agents, device=visibility.device, dtype=torch.int64
    )
    return (visibility.to(torch.int64) * bits).sum(dim=-1)


def bitmask_to_visibility(bitmask: Tensor, num_agents: int) -> Tensor:
    """Inverse of ``visibility_to_bitmask``: int64 ``[B, A]`` to bool ``[B, A, A]``."""
    shifts = torch.arange(num_agents, device=bitmask.device, dtype=torch.int64)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).bool()


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
        ids = agent_ids.long()
        query_agents = ids[:, num_keys - num_queries :]  # [B, Nq]
        rows = torch.gather(
            visibility, 1, query_agents[:, :, None].expand(-1, -1, visibility.shape[-1])
        )  # [B, Nq, A]: what each query's agent sees
        allowed = allowed & torch.gather(rows, 2, ids[:, None, :].expand(-1, num_queries, -1))
    return allowed.unsqueeze(1)
