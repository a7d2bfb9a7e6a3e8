"""The attention contract: the mask rule on hand-built cases, validation, dispatch, and the
sdpa backend against the reference on random cases."""

from __future__ import annotations

import os

import pytest
import torch

from agentfast.attention import (
    AttentionInputError,
    BackendUnavailableError,
    attention,
    bitmask_to_visibility,
    dense_mask,
    explain,
    make_call,
    select_backend,
    visibility_to_bitmask,
)
from tests.attention_cases import make_case

DENSE_BACKENDS = ["reference", "sdpa"]
# Every backend that can run on this machine's CPU checks the rule on the hand-built cases;
# triton only under the interpreter (set by conftest when there is no GPU).
RULE_BACKENDS = DENSE_BACKENDS + ["cpp"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])


def expected_rows(allowed: list[list[int]], num_keys: int) -> torch.Tensor:
    rows = torch.zeros(len(allowed), num_keys)
    for i, keys in enumerate(allowed):
        if keys:
            rows[i, keys] = 1.0 / len(keys)
    return rows


@pytest.mark.parametrize("backend", RULE_BACKENDS)
class TestHandBuiltRule:
    def run(self, backend, num_queries, num_keys, **kwargs):
        q = torch.zeros(1, 1, num_queries, num_keys)
        k = torch.randn(1, 1, num_keys, num_keys)
        v = torch.eye(num_keys).reshape(1, 1, num_keys, num_keys)
        return attention(q, k, v, backend=backend, **kwargs)[0, 0]

    def test_causal_square(self, backend):
        out = self.run(backend, 3, 3, causal=True)
        torch.testing.assert_close(out, expected_rows([[0], [0, 1], [0, 1, 2]], 3))

    def test_causal_bottom_right_alignment(self, backend):
        # Two queries against four keys: they sit at positions 2 and 3.
        out = self.run(backend, 2, 4, causal=True)
        torch.testing.assert_close(out, expected_rows([[0, 1, 2], [0, 1, 2, 3]], 4))

    def test_single_decode_query_sees_everything_before_it(self, backend):
        out = self.run(backend, 1, 5, causal=True)
        torch.testing.assert_close(out, expected_rows([[0, 1, 2, 3, 4]], 5))

    def test_not_causal(self, backend):
        out = self.run(backend, 2, 3, causal=False)
        torch.testing.assert_close(out, expected_rows([[0, 1, 2]] * 2, 3))

    def test_seq_lens_hide_padding_keys(self, backend):
        out = self.run(backend, 4, 4, causal=True, seq_lens=torch.tensor([2]))
        torch.testing.assert_close(out, expected_rows([[0], [0, 1], [0, 1], [0, 1]], 4))

    def test_zero_length_row_is_exactly_zero(self, backend):
        out = self.run(backend, 3, 3, causal=False, seq_lens=torch.tensor([0]))
        assert torch.equal(out, torch.zeros(3, 3))

    def test_agent_visibility(self, backend):
        # Positions belong to agents 0, 1, 0, 1. Agent 0 sees only itself; agent 1 sees both.
        ids = torch.tensor([[0, 1, 0, 1]])
        visibility = torch.tensor([[True, False], [True, True]])
        out = self.run(backend, 4, 4, causal=True, agent_ids=ids, agent_visibility=visibility)
        torch.testing.assert_close(out, expected_rows([[0], [0, 1], [0, 2], [0, 1, 2, 3]], 4))

    def test_agent_that_sees_nothing_yet_gets_zeros(self, backend):
        # Agent 1 sees only agent 0, which appears after it: its first row has no key.
        ids = torch.tensor([[1, 0, 1]])
        visibility = torch.tensor([[True, False], [True, False]])
        out = self.run(backend, 3, 3, causal=True, agent_ids=ids, agent_visibility=visibility)
        torch.testing.assert_close(out, expected_rows([[], [1], [1]], 3))

    def test_all_rules_combined(self, backend):
        ids = torch.tensor([[0, 1, 1, 0, 1]])
        visibility = torch.tensor([[True, True], [False, True]])
        out = self.run(backend, 3, 5, causal=True, seq_lens=torch.tensor([4]),
                       agent_ids=ids, agent_visibility=visibility)
        # Queries at positions 2, 3, 4 (agents 1, 0, 1); keys beyond 3 are padding.
        torch.testing.assert_close(out, expected_rows([[1, 2], [0, 1, 2, 3], [1, 2]], 5))


def test_bitmask_round_trip_including_bit_63():
    visibility = torch.rand(3, 64, 64) < 0.5
    visibility[:, :, 63] = True
    bitmask = visibility_to_bitmask(visibility)
    assert bitmask.dtype == torch.int64 and bitmask.shape == (3, 64)
    assert (bitmask < 0).all()  # bit 63 is the sign bit
    assert torch.equal(bitmask_to_visibility(bitmask, 64), visibility)


def test_bitmask_of_small_matrix_by_hand():
    visibility = torch.tensor([[[True, False, True], [False, True, False], [True, True, True]]])
    assert visibility_to_bitmask(visibility).tolist() == [[0b101, 0b010, 0b111]]


def test_dense_mask_matches_rule_elementwise():
    generator = torch.Generator().manual_seed(3)
    batch, num_queries, num_keys, agents = 2, 3, 6, 3
    seq_lens = torch.tensor([4, 6])
    ids = torch.randint(0, agents, (batch, num_keys), generator=generator)
    visibility = torch.rand(batch, agents, agents, generator=generator) < 0.5
    mask = dense_mask(batch, num_queries, num_keys, torch.device("cpu"), causal=True,
                      seq_lens=seq_lens, agent_ids=ids, visibility=visibility)
    for b in range(batch):
        for i in range(num_queries):
            p = num_keys - num_queries + i
            for j in range(num_keys):
                rule = j <= p and j < seq_lens[b] and bool(visibility[b, ids[b, p], ids[b, j]])
                assert bool(mask[b, 0, i, j]) == rule, (b, i, j)


def test_fully_masked_rows_zero_output_and_zero_grads():
    case = make_case(agents=2, fully_masked_row=True)
    for backend in DENSE_BACKENDS:
        q, k, v = (t.clone().requires_grad_() for t in (case.q, case.k, case.v))
        out = attention(q, k, v, backend=backend, **case.mask_kwargs())
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        out.sum().backward()
        for grad in (q.grad, k.grad, v.grad):
            assert torch.isfinite(grad).all()
            assert torch.equal(grad[0], torch.zeros_like(grad[0]))


def test_strided_qkv_split_gives_same_result_as_contiguous():
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 9, 3, 4, 16, generator=generator)  # [B, N, 3, H, D] from a fused projection
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    for backend in DENSE_BACKENDS:
        torch.testing.assert_close(
            attention(q, k, v, backend=backend),
            attention(q.contiguous(), k.contiguous(), v.contiguous(), backend=backend),
        )


def test_default_scale_is_inverse_sqrt_head_dim():
    case = make_case(head_dim=16)
    default = attention(case.q, case.k, case.v, backend="reference")
    explicit = attention(case.q, case.k, case.v, scale=0.25, backend="reference")
    torch.testing.assert_close(default, explicit)
    other = attention(case.q, case.k, case.v, scale=1.0, backend="reference")
    assert not torch.allclose(default, other)


class TestValidation:
    q = torch.randn(2, 3, 5, 8)
    kv = torch.randn(2, 3, 7, 8)

    def expect(self, match, **kwargs):
        args = dict(q=self.q, k=self.kv, v=self.kv)
        args.update({name: kwargs.pop(name) for name in ("q", "k", "v") if name in kwargs})
        with pytest.raises(AttentionInputError, match=match):
            attention(args["q"], args["k"], args["v"], **kwargs)

    def test_wrong_rank(self):
        self.expect(r"q must be 4-D \[B, H, N, D\], got shape \(3, 5, 8\)", q=self.q[0])

    def test_integer_dtype(self):
        self.expect("q must be float32, float16, bfloat16 or float64", q=self.q.long())

    def test_mixed_dtypes(self):
        self.expect("must share a dtype", k=self.kv.half())

    def test_more_queries_than_keys(self):
        self.expect("Nq must be <= Nk", q=torch.randn(2, 3, 9, 8))

    def test_head_mismatch(self):
        self.expect("does not match q shape", k=torch.randn(3, 3, 7, 8), v=torch.randn(3, 3, 7, 8))

    def test_query_heads_not_a_multiple_of_kv_heads(self):
        self.expect("q has 3 heads and k/v 2: the query heads must be a multiple",
                    k=torch.randn(2, 2, 7, 8), v=torch.randn(2, 2, 7, 8))

    def test_more_kv_heads_than_query_heads(self):
        self.expect("q has 3 heads and k/v 6", k=torch.randn(2, 6, 7, 8), v=torch.randn(2, 6, 7, 8))

    def test_head_dim_too_large(self):
        big = torch.randn(1, 1, 2, 260)
        self.expect("head dim must be <= 256", q=big, k=big, v=big)

    def test_seq_lens_shape(self):
        self.expect(r"seq_lens must have shape \[2\], got \[3\]", seq_lens=torch.tensor([1, 2, 3]))

    def test_seq_lens_float(self):
        self.expect("seq_lens must be an integer tensor", seq_lens=torch.tensor([1.0, 2.0]))

    def test_seq_lens_out_of_range_names_the_entry(self):
        self.expect(r"seq_lens\[1\] = 8 is outside \[0, 7\]", seq_lens=torch.tensor([3, 8]))

    def test_negative_seq_len(self):
        self.expect(r"seq_lens\[0\] = -1", seq_lens=torch.tensor([-1, 2]))

    def test_agent_id_out_of_range_names_the_entry(self):
        ids = torch.zeros(2, 7, dtype=torch.long)
        ids[1, 4] = 2
        self.expect(r"agent_ids\[1, 4\] = 2 is outside \[0, 1\]",
                    agent_ids=ids, agent_visibility=torch.ones(2, 2, dtype=torch.bool))

    def test_agent_ids_shape(self):
        self.expect(r"agent_ids must have shape \[2, 7\]", agent_ids=torch.zeros(2, 5, dtype=torch.long),
                    agent_visibility=torch.ones(2, 2, dtype=torch.bool))

    def test_visibility_without_ids(self):
        self.expect("without agent_ids", agent_visibility=torch.ones(2, 2, dtype=torch.bool))

    def test_visibility_not_bool(self):
        self.expect("agent_visibility must be bool", agent_ids=torch.zeros(2, 7, dtype=torch.long),
                    agent_visibility=torch.ones(2, 2))

    def test_visibility_not_square(self):
        self.expect(r"agent_visibility must be \[A, A\] or \[B=2, A, A\]",
                    agent_ids=torch.zeros(2, 7, dtype=torch.long),
                    agent_visibility=torch.ones(2, 3, dtype=torch.bool))

    def test_visibility_wrong_batch(self):
        self.expect("B=2", agent_ids=torch.zeros(2, 7, dtype=torch.long),
                    agent_visibility=torch.ones(3, 2, 2, dtype=torch.bool))

    def test_too_many_agents(self):
        self.expect("at most 64 agents", agent_ids=torch.zeros(2, 7, dtype=torch.long),
                    agent_visibility=torch.ones(65, 65, dtype=torch.bool))

    def test_unknown_backend(self):
        with pytest.raises(ValueError, match="unknown attention backend 'fast'; choose one of"):
            attention(self.q, self.kv, self.kv, backend="fast")


def test_named_backend_that_cannot_serve_says_why():
    case = make_case()
    with pytest.raises(BackendUnavailableError, match="'flex' cannot serve this call: runs on cuda, not cpu"):
        attention(case.q, case.k, case.v, backend="flex")


def test_auto_serves_everything_reference_serves_on_cpu():
    for options in (dict(), dict(causal=False, padding=True), dict(agents=3, padding=True, fully_masked_row=True),
                    dict(num_queries=1, num_keys=9), dict(num_queries=97, head_dim=40, agents=4)):
        for dtype in (torch.float32, torch.bfloat16):
            case = make_case(dtype=dtype, **options)
            call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
            chosen = select_backend(call, "auto")
            assert chosen.why_not(call) is None
            out = attention(case.q, case.k, case.v, **case.mask_kwargs())
            ref = attention(case.q, case.k, case.v, backend="reference", **case.mask_kwargs())
            tolerance = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(out.float(), ref.float(), atol=tolerance, rtol=tolerance)


def test_explain_lists_every_backend_with_a_reason_or_none():
    case = make_case()
    reasons = explain(make_call(case.q, case.k, case.v))
    assert reasons["reference"] is None and reasons["sdpa"] is None
    assert "cuda" in reasons["flex"]
    assert set(reasons) >= {"reference", "sdpa", "flex", "triton", "cuda", "cpp"}


def test_agent_ids_without_visibility_means_everyone_sees_everyone():
    case = make_case(agents=3)
    with_ids = attention(case.q, case.k, case.v, agent_ids=case.agent_ids, backend="reference")
    plain = attention(case.q, case.k, case.v, backend="reference")
    assert torch.equal(with_ids, plain)


def test_compiles_fullgraph_with_sdpa_backend():
    case = make_case(agents=2, padding=True)

    def run(q, k, v, seq_lens, ids, visibility):
        return attention(q, k, v, seq_lens=seq_lens, agent_ids=ids, agent_visibility=visibility, backend="sdpa")

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    args = (case.q, case.k, case.v, case.seq_lens, case.agent_ids, case.agent_visibility)
    torch.testing.assert_close(compiled(*args), run(*args))
