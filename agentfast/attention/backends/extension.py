"""The ``cpp`` (CPU) and ``cuda`` (GPU) backends: the compiled op ``agentfast::masked_attention``.

``agentfast._C`` defines the op and its backward (``csrc/``) with CPU and CUDA kernels. This
module adds what torch needs around them: fake (meta) kernels, so ``torch.compile`` can trace
the op, and the autograd formula, so gradients flow. The C++ library names this module as its
Python home, so torch imports it whenever those parts are needed.

The op returns ``(out, lse)``: ``lse`` [B, H, Nq] is the row log-sum-exp of the scaled scores
(float32; float64 for float64 inputs), ``-inf`` for rows with no allowed key. It is saved for
the backward and is itself differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._extension import load, load_error
from .base import AttentionBackend, AttentionCall

_EXTENSION = load()
_LOAD_ERROR: str | None = None if _EXTENSION is not None else (load_error() or "agentfast._C is not built")
_BUILT_WITH_CUDA: bool = bool(_EXTENSION is not None and _EXTENSION.built_with_cuda())


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale):
    batch, heads, num_queries, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, heads, num_queries), dtype=_lse_dtype(q.dtype))


def _fake_backward(grad_out, q, k, v, out, lse, grad_lse, seq_lens, agent_ids, agent_bitmask, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask)
    ctx.causal = causal
    ctx.scale = scale


def _backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
    q, k, v, out, lse, seq_lens, agent_ids, agent_bitmask = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grad_q, grad_k, grad_v = torch.ops.agentfast.masked_attention_backward(
        grad_out, q, k, v, out, lse, grad_lse, seq_lens, agent_ids, agent_bitmask, ctx.causal, ctx.scale
    )
    return grad_q, grad_k, grad_v, None, None, None, None, None


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "agentfast::masked_attention (backends cpp and cuda) has first-order gradients only; "
        "double backward (e.g. a gradient penalty) needs backend='reference'"
    )


if _EXTENSION is not None:
    torch.library.register_fake("agentfast::masked_attention")(_fake_forward)
    torch.library.register_fake("agentfast::masked_attention_backward")(_fake_backward)
    torch.library.register_autograd(
        "agentfast::masked_attention", _backward, setup_context=_setup_context
    )
    # Without an autograd kernel torch would differentiate the backward op as a constant and
    # give silently wrong second-order gradients; this makes double backward an error instead.
    torch.library.register_autograd(
        "agentfast::masked_attention_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
    )


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    scale: float,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    agent_bitmask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Call the compiled op directly: ``(out, lse)``. ``agent_bitmask`` is int64 ``[B, A]``
    (bit c of row a = agent a sees agent c), as ``visibility_to_bitmask`` makes it."""
    if _EXTENSION is None:
        raise RuntimeError(_LOAD_ERROR)
    return torch.ops.agentfast.masked_attention(
        q, k, v, seq_lens, agent_ids, agent_bitmask, bool(causal), float(scale)
    )


class _ExtensionBackend(AttentionBackend):
    """One device's half of agentfast._C."""

    def __init__(self, name: str, device: str, dtypes: tuple[torch.dtype, ...]) -> None:
        self.name = name
        self.devices = (device,)
        self.dtypes = dtypes
        self.max_head_dim = 256

    def unavailable_reason(self) -> str | None:
        if _LOAD_ERROR is not None:
            return _LOAD_ERROR
        if self.devices == ("cuda",) and not _BUILT_WITH_CUDA:
            return ("agentfast._C was built without its CUDA kernels; rebuild with AGENTFAST_CUDA=1 "
                    "and CUDA_HOME pointing at a CUDA toolkit")
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        out, _ = torch.ops.agentfast.masked_attention(
            call.q, call.k, call.v, call.seq_lens, call.agent_ids, call.agent_bitmask,
            call.causal, call.scale,
        )
        return out


class _CudaExtensionBackend(_ExtensionBackend):
    """The CUDA half, which also needs the device to have the kernels' shared memory and
    tensor cores for fp16/bf16."""

    def why_not(self, call: AttentionCall) -> str | None:
        reason = super().why_not(call)
        if reason is not None:
            return reason
        properties = torch.cuda.get_device_properties(call.device)
        if call.dtype != torch.float32 and properties.major < 8:
            return (f"needs compute capability 8.0+ for {str(call.dtype).removeprefix('torch.')} "
                    f"(tensor cores), {properties.name} has {properties.major}.{properties.minor}")
        # A call that needs no gradient runs the forward kernel alone.
        needed = _EXTENSION.cuda_shared_memory_bytes(call.dtype == torch.float32, call.head_dim, call.needs_grad)
        allowed = properties.shared_memory_per_block_optin
        if needed > allowed:
            return (f"needs {needed // 1024} KiB of shared memory per block at head dim {call.head_dim} "
                    f"({str(call.dtype).removeprefix('torch.')}{', with gradients' if call.needs_grad else ''}), "
                    f"{properties.name} allows {allowed // 1024} KiB")
        return None


CPP_BACKEND = _ExtensionBackend(
    "cpp", "cpu", (torch.float32, torch.float16, torch.bfloat16, torch.float64)
)
CUDA_BACKEND = _CudaExtensionBackend("cuda", "cuda", (torch.float32, torch.float16, torch.bfloat16))
