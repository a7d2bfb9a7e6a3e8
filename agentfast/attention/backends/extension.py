"""The ``cpp`` (CPU) and ``cuda`` (GPU) backends: the compiled op ``agentfast::masked_attention``.

q is ``[B, H, Nq, D]``; k and v ``[B, Hkv, Nk, D]`` with H a multiple of Hkv (grouped-query and
multi-query attention, no repeated copies of k/v). On CUDA, fp16/bf16 run on tensor cores
(mma.sync, FlashAttention-2 design); fp32 runs the same kernels with FMA products (tf32 would
miss the fp32 accuracy rule).

``agentfast._C`` defines the op and its backward (``csrc/``) with CPU and CUDA kernels. This
module adds what torch needs around them: fake (meta) kernels, so ``torch.compile`` can trace
the op, and the autograd formula, so gradients flow. The C++ library names this module as its
Python home, so torch imports it whenever those parts are needed.

The op returns ``(out, lse)`` under the fused ops' one contract (``agentfast.attention.op_autograd``):
``lse`` [B, H, Nq] is the row log-sum-exp of the scaled scores (float32; float64 for float64
inputs), ``-inf`` for rows with no allowed key, saved for the backward and itself differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._extension import load, load_error
from ..op_autograd import register_attention_autograd
from .base import AttentionBackend, AttentionCall

_EXTENSION = load()
_LOAD_ERROR: str | None = None if _EXTENSION is not None else (load_error() or "agentfast._C is not built")
_BUILT_WITH_CUDA: bool = bool(_EXTENSION is not None and _EXTENSION.built_with_cuda())


if _EXTENSION is not None:
    register_attention_autograd("agentfast::masked_attention", "agentfast::masked_attention_backward",
                                backends="cpp and cuda")


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

    # k/v with fewer heads than q: the kernels read kv head h // (H // Hkv) in place and sum
    # dK/dV over each group's query heads in a fixed order.
    supports_grouped_query = True

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
