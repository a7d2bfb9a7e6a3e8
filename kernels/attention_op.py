"""The fused attention kernels as torch.library custom ops with autograd.

``agentfast::triton_attention_forward`` returns (out, lse); ``..._backward`` returns
(dq, dk, dv). Both follow the fused ops' one contract (``agentfast.attention.op_autograd``:
schemas, fake kernels, a differentiable lse, no double backward), so
``torch.compile(fullgraph=True)`` traces through them and ``torch.library.opcheck`` passes.
custom_op (rather than triton_op) keeps the ops usable under the Triton interpreter on CPU,
where Inductor cannot inline a user Triton kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentfast.attention.op_autograd import BACKWARD_SCHEMA, FORWARD_SCHEMA, register_attention_autograd
from agentfast.kernels import flash_attention


@torch.library.custom_op("agentfast::triton_attention_forward", mutates_args=(), schema=FORWARD_SCHEMA)
def attention_forward(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return flash_attention.forward(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale)


@torch.library.custom_op("agentfast::triton_attention_backward", mutates_args=(), schema=BACKWARD_SCHEMA)
def attention_backward(grad_out, q, k, v, out, lse, grad_lse, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return flash_attention.backward(grad_out, q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask,
                                    causal, scale, grad_lse=grad_lse)


register_attention_autograd("agentfast::triton_attention_forward", "agentfast::triton_attention_backward",
                            backends="triton")


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
