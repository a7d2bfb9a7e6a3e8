"""The ``triton`` backend: the fused FlashAttention-2 style kernels of ``agentfast.kernels``.

Fast path on GPU for every mask of the contract (causal, padding, agents), with grouped-query
and multi-query attention (k/v with fewer heads than q, read in place, never repeated). On CPU it runs
only under the Triton interpreter (``TRITON_INTERPRET=1``, set before the kernels are first
imported), which is how the CPU test tier checks it. Triton is imported on first use only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .base import AttentionBackend, AttentionCall

_KERNELS_PACKAGE = "agentfast.kernels"
_kernels_interpreted: bool | None = None  # set when load_kernels() first runs


# Looked up once (without importing triton): torch.compile cannot trace importlib.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def _ensure_kernels_package() -> None:
    """Make ``agentfast.kernels`` importable from a source checkout that was not installed.

    An installed agentfast maps ``agentfast.kernels`` to the top-level ``kernels/`` folder
    (setup.py package_dir). Running from the repository without installing lacks that
    mapping; register the folder under its package name (never as a top-level ``kernels``).
    """
    if _KERNELS_PACKAGE in sys.modules or importlib.util.find_spec(_KERNELS_PACKAGE) is not None:
        return
    folder = Path(__file__).resolve().parents[3] / "kernels"
    spec = importlib.util.spec_from_file_location(
        _KERNELS_PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"{_KERNELS_PACKAGE} is not installed and {folder} is missing")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_KERNELS_PACKAGE] = module
    spec.loader.exec_module(module)


def load_kernels() -> ModuleType:
    """The op module ``agentfast.kernels.attention_op`` (imports triton, registers the ops)."""
    # A plain import statement, not importlib: torch.compile can trace this one.
    from agentfast.kernels import attention_op

    global _kernels_interpreted
    _kernels_interpreted = attention_op.flash_attention.INTERPRETED
    return attention_op


def interpreter_active() -> bool:
    """Whether the kernels run (or, once loaded, will run) under the Triton interpreter.

    triton.jit reads TRITON_INTERPRET when the kernels are decorated, so once they are
    loaded their setting wins over the current environment.
    """
    if _kernels_interpreted is not None:
        return _kernels_interpreted
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if _TRITON_FOUND:
    _ensure_kernels_package()


class TritonBackend(AttentionBackend):
    name = "triton"
    devices = ("cuda", "cpu")
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    max_head_dim = 256
    supports_grouped_query = True  # the kernels index the kv head of each query head

    def unavailable_reason(self) -> str | None:
        if not _TRITON_FOUND:
            return "triton is not installed (pip install triton)"
        return None

    def why_not(self, call: AttentionCall) -> str | None:
        reason = super().why_not(call)
        if reason is not None:
            return reason
        interpreted = interpreter_active()
        if call.device.type == "cpu" and not interpreted:
            return "runs on CUDA; on CPU only under TRITON_INTERPRET=1"
        if call.device.type == "cuda" and interpreted:
            return "the Triton kernels were loaded under TRITON_INTERPRET=1, which runs on CPU tensors only"
        if call.dtype == torch.bfloat16 and interpreted:
            return "bfloat16 is not supported under the Triton interpreter (its bf16 tl.dot is broken); use float32/float16 or CUDA"
        if call.dtype == torch.bfloat16 and not _device_has_bf16(call.device):
            return "bfloat16 needs a GPU of compute capability 8.0 or newer"
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        op = load_kernels()
        return op.fused_attention(
            call.q, call.k, call.v, causal=call.causal, scale=call.scale, seq_lens=call.seq_lens,
            agent_ids=call.agent_ids, agent_bitmask=call.agent_bitmask,
        )


def _device_has_bf16(device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


BACKEND = TritonBackend()
