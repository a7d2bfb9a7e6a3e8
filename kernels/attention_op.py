"""The fused attention kernels as torch.library custom ops with autograd.

``agentfast::triton_attention_forward`` returns (out, lse); ``..._backward`` returns
(dq, dk, dv). Both are opaque to torch.compile (fake implementations give the shapes), so
``torch.compile(fullgraph=True)`` traces through them and ``torch.library.opcheck`` passes.
custom_op (rather than triton_op) keeps the ops usable under the Triton interpreter on CPU,
where Inductor cannot inline a user Triton kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentfast.kernels import flash_attention

_FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor? seq_lens, Tensor? agent_ids, Tensor? agent_bitmask, "
    "bool causal, float scale) -> (Tensor, Tensor)"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? seq_lens, "
    "Tensor? agent_ids, Tensor? agent_bitmask, bool causal, float scale) -> (Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("agentfast::triton_attention_forward", mutates_args=(), schema=_FORWARD_SCHEMA)
def attention_forward(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return flash_attention.forward(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale)


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("agentfast::triton_attention_backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def attention_backward(grad_out, q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return flash_attention.backward(grad_out, q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask,
                                    causal, scale)


@attention_backward.register_fake
def _attention_backward_fake(grad_out, q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor | None):
    q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask = ctx.saved_tensors
    dq, dk, dv = attention_backward(grad_out, q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask,
                                    ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


def fused_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float,
                    seq_lens: Tensor | None = None, agent_ids: Tensor | None = None,
                    agent_bitmask: Tensor | None = None) -> Tensor:
    """Attention under the contract's rule; differentiable in q, k, v.

    seq_lens: int [B]; agent_ids: int [B, Nk]; agent_bitmask: int64 [B, A] (given together
    with agent_ids, or neither). Index tensors are converted to the kernels' layout here.
    """
    if seq_lens is not None:
        seq_lens = seq_lens.to(torch.int32).contiguous()
    if agent_bitmask is not None:
        assert agent_ids is not None, "agent_bitmask needs agent_ids"
        agent_ids = agent_ids.to(torch.int32).contiguous()
        agent_bitmask = agent_bitmask.to(torch.int64).contiguous()
    else:
        agent_ids = None
    out, _ = attention_forward(q, k, v, seq_lens, agent_ids, agent_bitmask, bool(causal), float(scale))
    return out
