"""Every attention backend against the reference, in one module.

Each test runs once per backend. A backend that cannot serve a case says why through its own
``why_not`` and the case is skipped with that sentence, as xformers' operator tests do: a run
lists, per backend, what was checked and what could not be. A backend that serves a call
without gradients but not with them (e.g. a forward-only path) is checked on the forward.
The cases and the numerics rule live in tests/attention_cases.py; what only one backend has
(tile lists, emulated CUDA fragments, thread splits, opcheck) stays in its own test file.
"""

from __future__ import annotations

import pytest
import torch

from agentfast.attention import attention, backend_names, dense_mask, get_backend, make_call
from agentfast.attention.backends import triton_fused
from tests.attention_cases import MASK_FEATURES, Case, assert_reruns_bitwise_identical, check_backend, make_case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [name for name in backend_names() if name != "reference"]  # the reference is the oracle
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
FUSED_OPS = ["cpp", "cuda", "triton"]  # backends over a (out, lse) op pair of one contract
HEADS = 4


def _call(case: Case, *, with_grad: bool):
    with torch.set_grad_enabled(with_grad):
        q, k, v = (t.detach().requires_grad_(with_grad) for t in (case.q, case.k, case.v))
        return make_call(q, k, v, **case.mask_kwargs())


def check_or_skip(backend: str, case: Case) -> None:
    """check_backend with gradients where ``backend`` serves them, forward only where it serves
    only that, else skip with the backend's own reason."""
    chosen = get_backend(backend)
    backward = chosen.why_not(_call(case, with_grad=True)) is None
    if not backward:
        reason = chosen.why_not(_call(case, with_grad=False))
        if reason is not None:
            pytest.skip(f"{backend}: {reason}")
    check_backend(case, lambda q, k, v, **kw: attention(q, k, v, backend=backend, **kw), backward=backward)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("feature", list(MASK_FEATURES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_features_match_reference(backend, feature, dtype):
    # Fewer queries than keys: causal rows sit bottom-right; 33 and 41 cross 16- and 32-wide tiles.
    case = make_case(2, 2, 33, 41, 32, dtype=dtype, device=DEVICE, seed=3, **MASK_FEATURES[feature])
    check_or_skip(backend, case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("feature", ["causal", "padding+agents", "causal+padding+agents", "empty-rows"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_query_heads_match_reference(backend, feature, kv_heads, dtype):
    # kv_heads = HEADS is the plain case of test_mask_features_match_reference.
    case = make_case(2, HEADS, 19, 27, 32, dtype=dtype, device=DEVICE, seed=7, kv_heads=kv_heads,
                     **MASK_FEATURES[feature])
    check_or_skip(backend, case)


ODD_SHAPES = {  # (num_queries, num_keys, head_dim, mask features)
    "nine-keys-one-query": (1, 9, 32, {}),
    "97-D40-agents": (97, 97, 40, dict(agents=4)),
    "17-D24-padding": (17, 17, 24, dict(causal=False, padding=True)),
    "5-against-13": (5, 13, 32, dict(agents=2, padding=True)),
}


@pytest.mark.parametrize("shape", list(ODD_SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_shapes_match_reference(backend, shape):
    num_queries, num_keys, head_dim, features = ODD_SHAPES[shape]
    check_or_skip(backend, make_case(2, 2, num_queries, num_keys, head_dim, device=DEVICE, seed=9, **features))


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rerun_is_bitwise_identical(backend, kv_heads):
    case = make_case(2, 2, 45, 50, 40, device=DEVICE, seed=11, padding=True, agents=4, kv_heads=kv_heads)
    reason = get_backend(backend).why_not(_call(case, with_grad=True))
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    out, dq, dk, dv = assert_reruns_bitwise_identical(case, lambda q, k, v, **kw: attention(q, k, v, backend=backend, **kw))
    assert dk.shape == case.k.shape and dv.shape == case.v.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_query_against_a_long_cache(backend):
    case = make_case(2, 2, 1, 70, 32, device=DEVICE, seed=11, causal=True, padding=True, agents=3)
    check_or_skip(backend, case)


# ----------------------------------------------------------------- the fused ops' one contract


def fused_op(backend: str):
    """``(q, k, v, call) -> (out, lse)`` through the backend's forward op."""
    if backend == "triton":
        op = triton_fused.load_kernels()

        def run(q, k, v, call):
            seq_lens = None if call.seq_lens is None else call.seq_lens.to(torch.int32)
            agent_ids = None if call.agent_ids is None else call.agent_ids.to(torch.int32).contiguous()
            return op.attention_forward(q, k, v, seq_lens, agent_ids, call.agent_bitmask, call.causal, call.scale)

        return run
    return lambda q, k, v, call: torch.ops.agentfast.masked_attention(
        q, k, v, call.seq_lens, call.agent_ids, call.agent_bitmask, call.causal, call.scale)


def fused_case_or_skip(backend: str) -> Case:
    """A float64 case where the backend serves float64, else float32, with gradients."""
    for dtype in (torch.float64, torch.float32):
        case = make_case(2, 2, 21, 35, 16, dtype=dtype, device=DEVICE, causal=True, agents=3, padding=True,
                         fully_masked_row=True, seed=4)
        reason = get_backend(backend).why_not(_call(case, with_grad=True))
        if reason is None:
            return case
    pytest.skip(f"{backend}: {reason}")


@pytest.mark.parametrize("backend", FUSED_OPS)
def test_lse_is_the_masked_logsumexp_and_is_differentiable(backend):
    case = fused_case_or_skip(backend)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    q, k, v = (t.detach().clone().requires_grad_() for t in (case.q, case.k, case.v))
    out, lse = fused_op(backend)(q, k, v, call)
    allowed = dense_mask(2, 21, 35, q.device, causal=True, seq_lens=call.seq_lens,
                         agent_ids=call.agent_ids, visibility=call.visibility)
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (case.q, case.k, case.v))
    has_key = allowed.any(-1).expand(lse.shape)  # [B, H, Nq]
    # Rows without keys get finite stand-in scores (their terms are weighted by 0 below), so
    # the oracle's own backward stays free of NaN.
    scores = (q2 @ k2.transpose(-1, -2) * call.scale).masked_fill(~allowed, float("-inf"))
    scores = scores.masked_fill(~has_key[..., None], 0.0)
    expected = torch.logsumexp(scores, dim=-1)
    expected_out = (torch.softmax(scores, dim=-1) * has_key[..., None]) @ v2
    assert lse.dtype == (torch.float64 if case.q.dtype == torch.float64 else torch.float32)
    assert torch.equal(torch.isneginf(lse), ~has_key), "rows without keys must have lse -inf"
    tolerance = 1e-10 if case.q.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(lse.double()[has_key], expected[has_key], rtol=0, atol=tolerance)
    # One loss through lse and out together: lse's gradient is softmax-weighted, so it reaches q and k.
    generator = torch.Generator().manual_seed(5)
    weights = torch.randn(lse.shape, generator=generator, dtype=torch.float64).to(DEVICE) * has_key
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(DEVICE)
    ((lse.double().nan_to_num(neginf=0.0) * weights).sum() + (out.double() * grad_out).sum()).backward()
    ((expected * weights).sum() + (expected_out * grad_out).sum()).backward()
    for name, actual, oracle in (("dq", q.grad, q2.grad), ("dk", k.grad, k2.grad), ("dv", v.grad, v2.grad)):
        torch.testing.assert_close(actual.double(), oracle, rtol=0, atol=10 * tolerance, msg=name)


@pytest.mark.parametrize("backend", FUSED_OPS)
def test_double_backward_is_an_error_naming_the_reference(backend):
    case = fused_case_or_skip(backend)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    q, k, v = (t.detach().clone().requires_grad_() for t in (case.q, case.k, case.v))
    out, _ = fused_op(backend)(q, k, v, call)
    (grad_q,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="backend='reference'"):
        grad_q.sum().backward()


def test_fused_ops_share_one_schema():
    from agentfast.attention.op_autograd import BACKWARD_SCHEMA, FORWARD_SCHEMA

    ops = {"cpp": torch.ops.agentfast.masked_attention}
    if get_backend("cpp").unavailable_reason() is not None:
        pytest.skip(f"cpp: {get_backend('cpp').unavailable_reason()}")
    if get_backend("triton").unavailable_reason() is None and triton_fused._TRITON_FOUND:
        triton_fused.load_kernels()
        ops["triton"] = torch.ops.agentfast.triton_attention_forward
    backward_ops = {"cpp": torch.ops.agentfast.masked_attention_backward,
                    "triton": getattr(torch.ops.agentfast, "triton_attention_backward", None)}

    def signature(schema) -> list[tuple[str, str]]:
        return [(a.name, str(a.type)) for a in schema.arguments]

    forward = torch._C.parse_schema("f" + FORWARD_SCHEMA)
    backward = torch._C.parse_schema("b" + BACKWARD_SCHEMA)
    for name, op in ops.items():
        assert signature(op.default._schema) == signature(forward), name
        assert signature(backward_ops[name].default._schema) == signature(backward), name
