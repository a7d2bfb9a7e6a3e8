"""A quick, built-in timing of every attention backend on one typical agent-masked call.

It works from an installed package (the full benchmarks live in the source tree's
``benchmarks/``) and answers one question: which backends serve this call here, and how
long does each take for a forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .api import attention, make_call
from .backends import backend_names, get_backend

# One typical call: B=4 sequences of N=256 tokens, H=4 heads of D=64, three agents, causal.
SHAPE = {"batch": 4, "heads": 4, "length": 256, "head_dim": 64, "agents": 3}


@dataclass(frozen=True)
class BackendTiming:
    """One backend's forward time in milliseconds, or why it was not timed."""

    backend: str
    milliseconds: float | None
    reason: str | None = None


def resolve_device(device: str) -> str:
    """``auto`` is cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def time_backends(device: str = "auto", repeats: int = 10) -> list[BackendTiming]:
    """Mean forward time of every backend that serves the typical call on ``device``."""
    device = resolve_device(device)
    batch, heads, length, dim = (SHAPE[k] for k in ("batch", "heads", "length", "head_dim"))
    q, k, v = (torch.randn(batch, heads, length, dim, device=device) for _ in range(3))
    inputs = dict(causal=True, seq_lens=torch.full((batch,), length, device=device),
                  agent_ids=torch.randint(0, SHAPE["agents"], (batch, length), device=device),
                  agent_visibility=torch.ones(SHAPE["agents"], SHAPE["agents"], dtype=torch.bool,
                                              device=device))
    call = make_call(q, k, v, **inputs)
    timings = []
    for name in backend_names():
        reason = get_backend(name).why_not(call)
        if name == "triton" and device == "cpu" and reason is None:
            reason = "the Triton interpreter on CPU checks correctness, not speed"
        if reason is not None:
            timings.append(BackendTiming(name, None, reason))
            continue
        attention(q, k, v, backend=name, **inputs)  # warm-up: compilation, caches
        started = time.perf_counter()
        for _ in range(repeats):
            attention(q, k, v, backend=name, **inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(BackendTiming(name, 1000 * (time.perf_counter() - started) / repeats))
    return timings


def describe_call(device: str = "auto") -> str:
    """The line that heads a report of ``time_backends``."""
    return (f"attention forward, B={SHAPE['batch']} H={SHAPE['heads']} N={SHAPE['length']} "
            f"D={SHAPE['head_dim']}, causal + agents, {resolve_device(device)}")
