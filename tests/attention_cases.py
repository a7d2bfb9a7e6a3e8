"""Shared test material for every attention backend: random cases and the numerics rule.

The numerics rule (the FlashAttention rule; docs/attention-contract.md, "How the backends
are tested"): a kernel's error against the fp32 reference must be at most 2x the error of
the reference computed in the low precision dtype, plus a small floor; for the output and
for dq, dk, dv.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from agentfast.attention import reference_attention

ABS_FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-10}


# Every mask feature alone and combined; each kernel's tests run all of them.
MASK_FEATURES = {
    "full": dict(causal=False),
    "causal": dict(causal=True),
    "padding": dict(causal=False, padding=True),
    "agents": dict(causal=False, agents=3),
    "causal+padding": dict(causal=True, padding=True),
    "causal+agents": dict(causal=True, agents=3),
    "padding+agents": dict(causal=False, padding=True, agents=3),
    "causal+padding+agents": dict(causal=True, padding=True, agents=5),
    "empty-rows": dict(causal=True, padding=True, agents=5, fully_masked_row=True),
}


@dataclass
class Case:
    """One attention problem: tensors plus the mask arguments of ``agentfast.attention``."""

    q: Tensor
    k: Tensor
    v: Tensor
    causal: bool = True
    seq_lens: Tensor | None = None
    agent_ids: Tensor | None = None
    agent_visibility: Tensor | None = None
    scale: float | None = None
    label: str = ""
    kwargs: dict = field(default_factory=dict)

    def mask_kwargs(self) -> dict:
        return dict(causal=self.causal, seq_lens=self.seq_lens, agent_ids=self.agent_ids,
                    agent_visibility=self.agent_visibility, scale=self.scale)


def make_case(
    batch: int = 2,
    heads: int = 2,
    num_queries: int = 17,
    num_keys: int | None = None,
    head_dim: int = 32,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    causal: bool = True,
    padding: bool = False,
    agents: int = 0,
    fully_masked_row: bool = False,
    seed: int = 0,
    kv_heads: int | None = None,
) -> Case:
    """A reproducible random case. ``agents`` > 0 adds agent ids and a random visibility
    (each agent always sees itself); ``fully_masked_row`` makes batch row 0 all padding
    (seq_len 0) so every query there has no key. ``kv_heads`` < ``heads`` makes a
    grouped-query case (k and v get ``kv_heads`` heads)."""
    generator = torch.Generator().manual_seed(seed)
    num_keys = num_queries if num_keys is None else num_keys
    kv_heads = heads if kv_heads is None else kv_heads

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    q = randn(batch, heads, num_queries, head_dim)
    k = randn(batch, kv_heads, num_keys, head_dim)
    v = randn(batch, kv_heads, num_keys, head_dim)
    seq_lens = None
    if padding or fully_masked_row:
        seq_lens = torch.randint(1, num_keys + 1, (batch,), generator=generator)
        seq_lens[-1] = num_keys
        if fully_masked_row:
            seq_lens[0] = 0
        seq_lens = seq_lens.to(device)
    agent_ids = visibility = None
    if agents:
        agent_ids = torch.randint(0, agents, (batch, num_keys), generator=generator).to(device)
        visibility = torch.rand(batch, agents, agents, generator=generator) < 0.5
        visibility |= torch.eye(agents, dtype=torch.bool)
        visibility = visibility.to(device)
    label = (f"B{batch}H{heads}{f'Hkv{kv_heads}' if kv_heads != heads else ''}"
             f"Nq{num_queries}Nk{num_keys}D{head_dim}-{str(dtype)[6:]}"
             f"{'-causal' if causal else ''}{'-pad' if padding else ''}"
             f"{f'-agents{agents}' if agents else ''}{'-empty' if fully_masked_row else ''}")
    return Case(q, k, v, causal, seq_lens, agent_ids, visibility, None, label)


def reference_outputs(case: Case, dtype: torch.dtype, grad_out: Tensor | None = None):
    """Reference output (and grads if grad_out) with inputs cast to ``dtype``.

    fp32/fp64 inputs are computed in that precision; low precision inputs are computed in
    their own dtype, giving the yardstick error of the rule.
    """
    q, k, v = (t.detach().to(dtype).requires_grad_(grad_out is not None) for t in (case.q, case.k, case.v))
    visibility = case.agent_visibility
    if visibility is not None and visibility.dim() == 2:
        visibility = visibility.expand(q.shape[0], -1, -1)
    out = reference_attention(q, k, v, causal=case.causal, seq_lens=case.seq_lens,
                              agent_ids=case.agent_ids, visibility=visibility, scale=case.scale,
                              compute_dtype=dtype)
    if grad_out is None:
        return out, None
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(dtype))
    return out, grads


def assert_flash_rule(name: str, actual: Tensor, exact: Tensor, low_precision: Tensor, dtype: torch.dtype) -> None:
    """|actual - exact| <= 2 |low_precision - exact| + floor, as max-abs errors."""
    assert not torch.isnan(actual).any(), f"{name}: NaN in the result"
    actual, exact, low_precision = (t.detach().double().cpu() for t in (actual, exact, low_precision))
    error = (actual - exact).abs().max().item()
    yardstick = (low_precision - exact).abs().max().item()
    bound = 2 * yardstick + ABS_FLOOR[dtype]
    assert error <= bound, f"{name}: max error {error:.3e} > bound {bound:.3e} (reference in {dtype}: {yardstick:.3e})"


def check_backend(case: Case, run, *, backward: bool = True) -> None:
    """Check ``run(q, k, v, **mask_kwargs)`` against the reference under the numerics rule,
    for the output and (if ``backward``) dq, dk, dv; fully masked rows must be exact zeros."""
    dtype = case.q.dtype
    # detach() keeps the caller's strides (a qkv split stays a strided view); clone() would not.
    q, k, v = (t.detach().requires_grad_(backward) for t in (case.q, case.k, case.v))
    out = run(q, k, v, **case.mask_kwargs())
    assert out.dtype == dtype and out.shape == case.q.shape
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out) if backward else None
    exact_out, exact_grads = reference_outputs(case, torch.float64 if dtype != torch.float64 else dtype, grad_out)
    low_out, low_grads = reference_outputs(case, dtype, grad_out)
    assert_flash_rule(f"{case.label} out", out, exact_out, low_out, dtype)
    empty_rows = exact_out.abs().amax(dim=-1) == 0
    if empty_rows.any():
        assert (out.detach()[empty_rows] == 0).all(), f"{case.label}: fully masked rows are not exactly zero"
    if backward:
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        for label, g, e, lp in zip(("dq", "dk", "dv"), grads, exact_grads, low_grads):
            assert_flash_rule(f"{case.label} {label}", g, e, lp, dtype)


def run_with_grads(case: Case, run) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out, dq, dk, dv) of ``run(q, k, v, **mask_kwargs)`` on fresh leaves of the case's
    tensors, with an upstream gradient of ones."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (case.q, case.k, case.v))
    out = run(q, k, v, **case.mask_kwargs())
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return (out.detach(), *grads)


def assert_reruns_bitwise_identical(case: Case, run) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two runs of the same call give the same bits in the output and every gradient (the
    kernels sum in a fixed order: no atomics, no thread-count-dependent reductions).
    Returns the first run's (out, dq, dk, dv)."""
    first, second = run_with_grads(case, run), run_with_grads(case, run)
    for name, a, b in zip(("out", "dq", "dk", "dv"), first, second):
        assert torch.equal(a, b), f"{case.label}: {name} differs between two runs of the same call"
    return first
