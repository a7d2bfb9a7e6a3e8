"""Grouped-query and multi-query attention in the contract: k/v with Hkv heads serve H query
heads (H a multiple of Hkv); query head h reads kv head h // (H // Hkv).

The oracle here is independent of the reference's own head repetition: each query head is
computed alone, as ordinary one-head attention against the kv head its group reads.
"""

from __future__ import annotations

import pytest
import torch

from agentfast.attention import BackendUnavailableError, attention, explain, make_call, select_backend
from tests.attention_cases import MASK_FEATURES, check_backend, make_case

HEADS = 4


def per_head_attention(case, backend: str = "reference") -> torch.Tensor:
    """Each query head alone against its kv head, with H = Hkv = 1 per call."""
    group = case.q.shape[1] // case.k.shape[1]
    outputs = [
        attention(case.q[:, h : h + 1], case.k[:, h // group : h // group + 1],
                  case.v[:, h // group : h // group + 1], backend=backend, **case.mask_kwargs())
        for h in range(case.q.shape[1])
    ]
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("feature", ["causal", "causal+padding+agents", "empty-rows"])
def test_reference_reads_the_kv_head_of_each_query_group(feature, kv_heads):
    options = dict(MASK_FEATURES[feature])
    case = make_case(heads=HEADS, kv_heads=kv_heads, num_queries=9, num_keys=13, seed=3, **options)
    out = attention(case.q, case.k, case.v, backend="reference", **case.mask_kwargs())
    torch.testing.assert_close(out, per_head_attention(case), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_reference_kv_gradients_sum_over_the_group(kv_heads):
    case = make_case(heads=HEADS, kv_heads=kv_heads, num_queries=7, num_keys=11, seed=5,
                     causal=True, padding=True, agents=3)
    grad_out = torch.randn(case.q.shape, generator=torch.Generator().manual_seed(2))

    def grads(run):
        q, k, v = (t.detach().requires_grad_() for t in (case.q, case.k, case.v))
        out = run(q, k, v)
        return torch.autograd.grad(out, (q, k, v), grad_out)

    def grouped(q, k, v):
        return attention(q, k, v, backend="reference", **case.mask_kwargs())

    def one_head_at_a_time(q, k, v):
        group = HEADS // kv_heads
        return torch.cat([
            attention(q[:, h : h + 1], k[:, h // group : h // group + 1], v[:, h // group : h // group + 1],
                      backend="reference", **case.mask_kwargs())
            for h in range(HEADS)
        ], dim=1)

    for name, actual, expected in zip(("dq", "dk", "dv"), grads(grouped), grads(one_head_at_a_time)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5, msg=name)


def test_sdpa_grouped_query_plain_causal_and_decode_paths():
    for num_queries in (1, 21):  # decode step, and the square is_causal path
        case = make_case(heads=HEADS, kv_heads=1, num_queries=num_queries, num_keys=21, seed=9)
        check_backend(case, lambda q, k, v, **kw: attention(q, k, v, backend="sdpa", **kw))


def test_grouped_query_call_records_the_group():
    case = make_case(heads=6, kv_heads=2, num_queries=5)
    call = make_call(case.q, case.k, case.v)
    assert (call.kv_heads, call.group_size) == (2, 3)


def test_backends_without_grouped_query_support_say_why_and_auto_still_serves():
    case = make_case(heads=HEADS, kv_heads=2, num_queries=6, causal=True, padding=True)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    reasons = explain(call)
    assert reasons["reference"] is None and reasons["sdpa"] is None
    decliners = [name for name, reason in reasons.items() if reason and "grouped-query" in reason]
    for name in decliners:
        with pytest.raises(BackendUnavailableError, match="grouped-query attention"):
            attention(case.q, case.k, case.v, backend=name, **case.mask_kwargs())
    chosen = select_backend(call, "auto")
    assert chosen.why_not(call) is None
    out = attention(case.q, case.k, case.v, **case.mask_kwargs())
    torch.testing.assert_close(out, per_head_attention(case), rtol=0, atol=1e-5)
