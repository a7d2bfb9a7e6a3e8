"""Mixed precision and reproducibility switches."""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from typing import ContextManager

import numpy as np
import torch


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # private probes may be missing or fail on exotic builds
            continue
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Turn ``auto`` (and unsupported requests) into what this device will really run.

    auto: bf16 on a GPU that supports it, else fp16 with a grad scaler on GPU; fp32 on CPU
    (CPU autocast helps only with native bf16 and small models gain little). An explicit
    bf16 on a CPU without native bf16 falls back to fp32 with a warning, because emulated
    bf16 is slower than fp32 and no more accurate.
    """
    device_type = torch.device(device).type
    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "bf16" and device_type == "cpu" and not cpu_supports_bf16():
        warnings.warn("this CPU has no native bf16; training in fp32 instead", stacklevel=2)
        return "fp32"
    return precision


def autocast_context(precision: str, device: torch.device | str) -> ContextManager:
    """Autocast for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (its small exponent range underflows gradients); None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Ask torch for deterministic kernels (and cuBLAS for a fixed workspace).

    Ops without a deterministic implementation warn instead of failing, so a deterministic
    run never dies on a backend that merely lacks one.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
