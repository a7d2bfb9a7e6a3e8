"""Builds the CUDA kernels against the CPU emulation (tests/cuda_emulation) as a torch
extension, once per test session."""

from __future__ import annotations

import functools
from pathlib import Path

EMULATION = Path(__file__).resolve().parent
ROOT = EMULATION.parents[1]


@functools.lru_cache(maxsize=None)
def emulated_kernels():
    """The module of emulated_attention.cpp: the attention kernels and the vocabulary checks
    (about 40 s to build the first time; torch caches the build in this checkout's build/
    folder, so checkouts side by side do not rebuild each other's copy)."""
    from torch.utils.cpp_extension import load

    name = "agentfast_cuda_emulation"
    build_dir = ROOT / "build" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    return load(name=name, sources=[str(EMULATION / "emulated_attention.cpp")], build_directory=str(build_dir),
                extra_include_paths=[str(ROOT / "csrc"), str(ROOT / "csrc" / "cuda"), str(EMULATION)],
                extra_cflags=["-O1", "-std=c++20"], verbose=False)
