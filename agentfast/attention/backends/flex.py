"""The ``flex`` backend: torch's FlexAttention with the contract's rule as a ``mask_mod``.

A peer for benchmarks and a GPU fallback; the block mask lets FlexAttention skip tiles the
rule empties. Compiled once per process (``torch.compile`` of ``flex_attention``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .base import AttentionBackend, AttentionCall


# Each mask combination (causal, padding, agents, query offset) is its own mask_mod and so
# its own graph; a benchmark sweep or a model with decode steps meets more of them than
# dynamo's default recompile limit (8), past which flex silently runs unfused.
_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)  # automatic dynamic shapes after the first recompile


def _recompile_limit_option() -> str:
    config = torch._dynamo.config
    return "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"


def make_mask_mod(call: AttentionCall):
    """The contract's rule as a FlexAttention mask_mod (bottom-right causal alignment)."""
    offset = call.k.shape[2] - call.q.shape[2]
    seq_lens, agent_ids, visibility = call.seq_lens, call.agent_ids, call.visibility
    causal = call.causal

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = kv_idx >= 0
        if causal:
            allowed = allowed & (kv_idx <= q_idx + offset)
        if seq_lens is not None:
            allowed = allowed & (kv_idx < seq_lens[b])
        if visibility is not None:
            allowed = allowed & visibility[b, agent_ids[b, q_idx + offset], agent_ids[b, kv_idx]]
        return allowed

    return mask_mod


class FlexBackend(AttentionBackend):
    name = "flex"
    devices = ("cuda",)
    max_head_dim = 256
    supports_grouped_query = True

    def unavailable_reason(self) -> str | None:
        try:
            from torch.nn.attention import flex_attention  # noqa: F401
        except ImportError as exc:
            return f"torch {torch.__version__} has no FlexAttention ({exc})"
        return None

    def why_not(self, call: AttentionCall) -> str | None:
        reason = super().why_not(call)
        if reason is None and call.head_dim & (call.head_dim - 1):
            return f"FlexAttention needs a power-of-two head dim, got {call.head_dim}"
        return reason

    def forward(self, call: AttentionCall) -> Tensor:
        from torch.nn.attention.flex_attention import create_block_mask

        batch, heads, num_queries, _ = call.q.shape
        block_mask = create_block_mask(
            make_mask_mod(call), batch, None, num_queries, call.k.shape[2], device=call.device
        )
        limit = {_recompile_limit_option(): _RECOMPILE_LIMIT}
        with torch._dynamo.config.patch(**limit):
            return _compiled_flex()(call.q, call.k, call.v, block_mask=block_mask, scale=call.scale,
                                    enable_gqa=call.group_size > 1)


BACKEND = FlexBackend()
