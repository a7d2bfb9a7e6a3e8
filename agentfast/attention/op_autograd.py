"""One autograd contract for the fused attention ops (Triton and C++/CUDA).

Every fused backend exposes two torch.library ops with the same signatures:

- forward ``(q, k, v, seq_lens?, agent_ids?, agent_bitmask?, causal, scale) -> (out, lse)``
- backward ``(grad_out, q, k, v, out, lse, grad_lse?, seq_lens?, agent_ids?, agent_bitmask?,
  causal, scale) -> (dq, dk, dv)``

``lse`` [B, H, Nq] is the row log-sum-exp of the scaled scores (natural log; float32, float64
for float64 inputs; ``-inf`` for a row with no allowed key) and is differentiable: since
d lse_i / d s_ij = p_ij, its gradient enters the backward as a shift of the softmax row term,
``delta_i = rowsum(dO_i * O_i) - grad_lse_i``, which every backward kernel applies. Double
backward is an error naming the reference backend, never silently wrong second derivatives.

``register_attention_autograd`` registers the fake (shape) kernels that torch.compile traces
with, the autograd formula of the forward op and the double-backward guard of the backward op.
"""

from __future__ import annotations

import torch
from torch import Tensor

FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor? seq_lens, Tensor? agent_ids, Tensor? agent_bitmask, "
    "bool causal, float scale) -> (Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? grad_lse, "
    "Tensor? seq_lens, Tensor? agent_ids, Tensor? agent_bitmask, bool causal, float scale) "
    "-> (Tensor, Tensor, Tensor)"
)


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of ``lse`` for inputs of ``dtype``: float64 stays float64, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype(q.dtype))


def _fake_backward(grad_out, q, k, v, out, lse, grad_lse, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask)
    ctx.causal, ctx.scale = causal, scale


def _autograd_formula(backward_op):
    def backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
        q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask = ctx.saved_tensors
        if grad_out is None:  # only lse was used
            grad_out = torch.zeros_like(out)
        grad_q, grad_k, grad_v = backward_op(
            grad_out, q, k, v, out, lse, grad_lse, seq_lens, agent_ids, agent_bitmask, ctx.causal, ctx.scale
        )
        return grad_q, grad_k, grad_v, None, None, None, None, None

    return backward


def _double_backward_error(op_name: str, backends: str):
    def refuse(ctx, *grads):
        raise RuntimeError(
            f"{op_name} (backend {backends}) has first-order gradients only; double backward "
            "(e.g. a gradient penalty) needs backend='reference'"
        )

    return refuse


def register_attention_autograd(forward_name: str, backward_name: str, *, backends: str) -> None:
    """Fake kernels, autograd and the double-backward guard for one forward/backward op pair.

    ``forward_name`` / ``backward_name``: qualified op names (``"agentfast::..."``) already
    defined with ``FORWARD_SCHEMA`` / ``BACKWARD_SCHEMA``. ``backends`` names the backends
    serving them, for the double-backward error.
    """
    # torch checks that a compiled op's fake kernels come from the module its C++ library names
    # (m.set_python_module): _stacklevel makes the caller, not this helper, the registering module.
    torch.library.register_fake(forward_name, _fake_forward, _stacklevel=2)
    torch.library.register_fake(backward_name, _fake_backward, _stacklevel=2)
    namespace, name = backward_name.split("::", 1)
    backward_op = getattr(getattr(torch.ops, namespace), name)
    torch.library.register_autograd(forward_name, _autograd_formula(backward_op), setup_context=_setup_context)
    # Without an autograd kernel torch would differentiate the backward op as a constant and
    # give silently wrong second-order gradients; this makes double backward an error instead.
    torch.library.register_autograd(
        backward_name, _double_backward_error(forward_name, backends), setup_context=lambda ctx, inputs, output: None
    )
