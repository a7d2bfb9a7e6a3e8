"""The oracle: plain PyTorch attention with a materialised mask and an fp32 softmax.

Every backend is tested against this. It favours clarity over speed and runs anywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .mask import dense_mask


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    visibility: Tensor | None = None,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Attention under the contract's rule, computed in ``compute_dtype``.

    q is ``[B, H, Nq, D]``, k and v ``[B, Hkv, Nk, D]`` with H a multiple of Hkv: query head
    h reads kv head ``h // (H // Hkv)`` (grouped-query attention), which this oracle spells
    out by repeating each kv head for its group. ``visibility`` is bool ``[B, A, A]``. Rows with no allowed key return exactly zero and
    get zero gradient: probabilities are built as ``exp(s - max) * mask / sum`` so a fully
    masked row is 0/1 rather than 0/0.

    ``compute_dtype`` exists for the numerics rule: the error of the reference computed in
    a low precision is the yardstick a kernel's error is measured against.
    """
    out, _ = reference_attention_and_weights(
        q, k, v, causal=causal, seq_lens=seq_lens, agent_ids=agent_ids, visibility=visibility,
        scale=scale, compute_dtype=compute_dtype,
    )
    return out


def reference_attention_and_weights(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    visibility: Tensor | None = None,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """``reference_attention``'s output and the probabilities it multiplies v by:
    ``[B, H, Nq, Nk]`` in ``compute_dtype``, exactly 0 wherever the rule forbids a key (so
    a fully masked row is all zeros)."""
    group_size = q.shape[1] // k.shape[1]
    probs = reference_attention_weights(
        q, k, causal=causal, seq_lens=seq_lens, agent_ids=agent_ids, visibility=visibility,
        scale=scale, compute_dtype=compute_dtype,
    )
    if group_size > 1:
        v = v.repeat_interleave(group_size, dim=1)
    out = torch.matmul(probs, v.to(compute_dtype))
    return out.to(q.dtype), probs


def reference_attention_weights(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = True,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    visibility: Tensor | None = None,
    scale: float | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The attention probabilities of ``reference_attention`` (arguments as there):
    ``[B, H, Nq, Nk]`` in ``compute_dtype``."""
    batch, heads, num_queries, head_dim = q.shape
    num_keys = k.shape[2]
    group_size = heads // k.shape[1]
    if group_size > 1:
        k = k.repeat_interleave(group_size, dim=1)
    scale = head_dim**-0.5 if scale is None else scale
    allowed = dense_mask(
        batch, num_queries, num_keys, q.device,
        causal=causal, seq_lens=seq_lens, agent_ids=agent_ids, visibility=visibility,
    )
    scores = torch.matmul(q.to(compute_dtype), k.to(compute_dtype).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    weights = torch.exp(scores - row_max) * allowed
    denominator = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
