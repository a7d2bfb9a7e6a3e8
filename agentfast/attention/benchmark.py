"""A quick, built-in timing of every attention backend on one typical agent-masked call,
and the multi-agent layouts the benchmarks share.

It works from an installed package (the full benchmarks live in the source tree's
``benchmarks/``) and answers one question: which backends serve this call here, and how
long does each take for a forward pass.

Layouts (``agent_turns``, ``tile_occupancy``): agents speak in turns, runs of tokens of
varied length, as in a multi-agent episode, not a random agent per token; the tile figures
say how much of the causal work a layout leaves once empty tiles are skipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..visibility import check_num_agents, visibility_preset
from .api import attention, make_call
from .backends import backend_names, get_backend
from .mask import dense_mask

# One typical call: B=4 sequences of N=256 tokens, H=4 heads of D=64, three agents taking
# turns of about 32 tokens, the "hub" visibility, causal.
SHAPE = {"batch": 4, "heads": 4, "length": 256, "head_dim": 64, "agents": 3, "turn": 32}
TILE = 128  # positions per tile side: the fused kernels' tile-list blocks and the cpp blocks


def agent_turns(batch: int, length: int, num_agents: int, mean_turn: int, *, seed: int = 0) -> Tensor:
    """int64 ``[batch, length]`` agent ids of agents speaking in turns.

    Each turn is a run of tokens whose length is log-uniform in ``[mean_turn / 4,
    4 * mean_turn]`` (short tool calls beside long replies); the next speaker is any agent
    but the one who just spoke (uniformly), and agent 0 opens. Every sequence of the batch
    gets its own turns, reproducible from ``seed``.
    """
    check_num_agents(num_agents)
    if length < 1 or mean_turn < 1:
        raise ValueError(f"length and mean_turn must be positive, got {length} and {mean_turn}")
    generator = torch.Generator().manual_seed(seed)
    low, high = math.log(max(1.0, mean_turn / 4)), math.log(4.0 * mean_turn)
    rows = []
    for _ in range(batch):
        ids = torch.empty(length, dtype=torch.int64)
        start, speaker = 0, 0
        while start < length:
            turn = max(1, round(math.exp(low + (high - low) * torch.rand((), generator=generator).item())))
            ids[start:start + turn] = speaker
            start += turn
            if num_agents > 1:  # any other agent, uniformly
                speaker = (speaker + 1 + int(torch.randint(num_agents - 1, (), generator=generator))) % num_agents
        rows.append(ids)
    return torch.stack(rows)


@dataclass(frozen=True)
class TileOccupancy:
    """The ``TILE x TILE`` (query, key) tiles a mask leaves, as shares of the tiles causal-only
    attention visits (the lower triangle and its diagonal) at the same length."""

    visited: float  # tiles with at least one allowed pair
    partial: float  # visited tiles with some pair masked (the rest need no mask)

    @property
    def skipped(self) -> float:
        return 1.0 - self.visited


def tile_occupancy(agent_ids: Tensor, visibility: Tensor, tile: int = TILE) -> TileOccupancy:
    """Share of causal-only attention's tiles that causal attention under the agent rule
    visits (``agent_ids [B, N]``, ``visibility [A, A]``), and the share of them that are
    partial, counted on the dense mask one sequence at a time (``N * N`` bools at most)."""
    visited = partial = causal_tiles = 0
    for ids in agent_ids:
        n = ids.shape[0]
        allowed = dense_mask(1, n, n, ids.device, causal=True, agent_ids=ids[None],
                             visibility=visibility.to(ids.device)[None])[0, 0]
        blocks = -(-n // tile)
        pad = (0, blocks * tile - n, 0, blocks * tile - n)
        # Padding is False for "any pair allowed" and True for "every pair allowed", so the
        # edge tiles are judged on their real pairs.
        tiles_any = F.pad(allowed, pad, value=False).view(blocks, tile, blocks, tile).any(3).any(1)
        tiles_all = F.pad(allowed, pad, value=True).view(blocks, tile, blocks, tile).all(3).all(1)
        visited += int(tiles_any.sum())
        partial += int((tiles_any & ~tiles_all).sum())
        causal_tiles += blocks * (blocks + 1) // 2
    return TileOccupancy(visited / causal_tiles, partial / causal_tiles)


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
                  agent_ids=agent_turns(batch, length, SHAPE["agents"], SHAPE["turn"]).to(device),
                  agent_visibility=visibility_preset("hub", SHAPE["agents"], device=device))
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
            f"D={SHAPE['head_dim']}, causal + {SHAPE['agents']} agents in turns (hub visibility), "
            f"{resolve_device(device)}")
