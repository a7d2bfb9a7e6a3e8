"""The ``triton`` attention backend against the reference (docs/attention-contract.md: the
rule, and how backends are tested).

Without a GPU these run the kernels under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports the kernels), fp32/fp16 and small shapes. With a
GPU the same tests run on CUDA, adding bf16, and the ``gpu`` tests add larger shapes and a
compiled model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import agentfast  # noqa: E402
from agentfast.attention import get_backend, make_call, visibility_to_bitmask  # noqa: E402
from agentfast.attention.backends import triton_fused  # noqa: E402
from agentfast.attention.backends.base import AttentionCall  # noqa: E402
from tests.attention_cases import Case, check_backend, make_case, reference_outputs  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# Under the interpreter every kernel tile is 16 x 16; on GPU tiles are at most 128 x 128.
TILE = 128 if ON_GPU else 16
# Agent masks are classified per block of LIST_BLOCK positions (32 under the interpreter, 128
# on GPU): features laid out in runs of this many positions start and end on list blocks.
TILE_ALIGNED = triton_fused.load_kernels().flash_attention.LIST_BLOCK if triton_fused._TRITON_FOUND else 128

pytestmark = [pytest.mark.gpu] if ON_GPU else [pytest.mark.triton_interpret]
if not ON_GPU and not triton_fused.interpreter_active():
    pytestmark.append(pytest.mark.skip(reason="no GPU and TRITON_INTERPRET is not 1"))


def run_triton(q, k, v, **mask_kwargs):
    return agentfast.attention(q, k, v, backend="triton", **mask_kwargs)


def blocky_agent_case(num_agents: int = 4, *, causal: bool = True, dtype=torch.float32,
                      head_dim: int = 32, num_queries: int | None = None) -> Case:
    """Agents act in runs of TILE_ALIGNED positions (agent of run r is r % A), and agent a sees
    itself and agent a-1 only: whole key tiles are invisible to whole query tiles (skipped) and
    others are fully visible (no mask arithmetic), besides the partial ones."""
    num_keys = num_agents * TILE_ALIGNED + TILE_ALIGNED // 2
    num_queries = num_keys if num_queries is None else num_queries
    case = make_case(1, 2, num_queries, num_keys, head_dim, dtype=dtype, device=DEVICE, causal=causal, seed=3)
    ids = (torch.arange(num_keys) // TILE_ALIGNED) % num_agents
    visibility = torch.eye(num_agents, dtype=torch.bool)
    visibility[1:, :-1] |= torch.eye(num_agents - 1, dtype=torch.bool)
    case.agent_ids = ids[None].to(DEVICE)
    case.agent_visibility = visibility.to(DEVICE)
    case.label = f"blocky-agents{num_agents}-Nq{num_queries}Nk{num_keys}-{dtype}"
    return case


# --------------------------------------------------------------------------- numerics


# (num_queries, num_keys, head_dim): odd lengths, decode (Nq = 1), Nq < Nk, odd head dims.
ODD_SHAPES = [(1, 1, 24), (17, 17, 64), (97, 97, 24), (5, 37, 40), (1, 33, 64), (33, 33, 128),
              (21, 21, 80), (9, 30, 96)]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: f"Nq{s[0]}-Nk{s[1]}-D{s[2]}")
def test_odd_shapes_with_every_mask(shape):
    num_queries, num_keys, head_dim = shape
    case = make_case(2, 1, num_queries, num_keys, head_dim, device=DEVICE, padding=True, agents=3, seed=7)
    check_backend(case, run_triton)


@pytest.mark.parametrize("shape", ODD_SHAPES[:4], ids=lambda s: f"Nq{s[0]}-Nk{s[1]}-D{s[2]}")
def test_odd_shapes_causal_only_fp16(shape):
    num_queries, num_keys, head_dim = shape
    check_backend(make_case(1, 2, num_queries, num_keys, head_dim, dtype=torch.float16, device=DEVICE), run_triton)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_tile_aligned_agents_match_reference(causal):
    check_backend(blocky_agent_case(causal=causal), run_triton)


def test_tile_aligned_agents_decode_rows():
    check_backend(blocky_agent_case(num_queries=TILE_ALIGNED + 3), run_triton)


def test_sixty_four_agents_use_the_sign_bit():
    """Agent 63 is bit 63 of the int64 bitmask, the sign bit: it must still mask correctly."""
    case = make_case(2, 1, 40, 70, 32, device=DEVICE, padding=True, agents=64, seed=5)
    ids = case.agent_ids.clone()
    ids[:, ::3] = 63
    visibility = case.agent_visibility.clone()
    visibility[:, 63, :] = False
    visibility[:, 63, 63] = visibility[:, 63, 0] = True
    visibility[:, 0, 63] = True
    visibility[:, 5, 63] = False
    case.agent_ids, case.agent_visibility = ids, visibility
    assert (visibility_to_bitmask(visibility)[:, 0] < 0).all(), "bit 63 should be the sign bit"
    check_backend(case, run_triton)


# --------------------------------------------------------------------------- mask semantics


def test_fully_masked_rows_are_zero_with_zero_gradient():
    """Rows with no allowed key (padding to 0, or an agent that sees nobody) give exactly 0 and
    zero dq; keys nobody attends get zero dk, dv; nothing is NaN."""
    num_keys = 24
    q, k, v = (torch.randn(2, 2, num_keys, 32, device=DEVICE, requires_grad=True) for _ in range(3))
    seq_lens = torch.tensor([0, num_keys], device=DEVICE)
    agent_ids = (torch.arange(num_keys, device=DEVICE) % 3).expand(2, -1).contiguous()
    visibility = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool, device=DEVICE)
    out = run_triton(q, k, v, seq_lens=seq_lens, agent_ids=agent_ids, agent_visibility=visibility)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    empty_rows = torch.zeros(2, 1, num_keys, dtype=torch.bool, device=DEVICE)
    empty_rows[0] = True
    empty_rows[1, 0] = agent_ids[1] == 2
    empty_rows = empty_rows.expand(-1, 2, -1)
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), f"{name} has NaN/inf"
    assert (out[empty_rows] == 0).all() and (dq[empty_rows] == 0).all()
    unseen_keys = empty_rows  # batch 0: padding; agent 2's keys: nobody sees agent 2
    assert (dk[unseen_keys] == 0).all() and (dv[unseen_keys] == 0).all()
    assert (out[~empty_rows].abs().sum(-1) > 0).all()


def test_every_alignment_of_the_causal_diagonal_with_the_tiles():
    # Query offsets Nk - Nq = 0..TILE + 1 put the diagonal at every position within the key
    # tiles, where a tile flips between "fully visible" and "needs the mask".
    num_queries = TILE + 2
    for offset in range(TILE + 2):
        case = make_case(1, 1, num_queries, num_queries + offset, 16, device=DEVICE, causal=True, seed=offset)
        case.label += f"-offset{offset}"
        check_backend(case, run_triton)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the poisoned rows, by design
def test_skipped_tiles_are_never_loaded():
    """Poison (NaN) the keys/values that the mask empties by whole tiles: causal tiles above the
    diagonal and tiles of an agent that no query tile sees. A kernel that skips those tiles
    never reads them; one that loads and masks them would turn 0 * NaN into NaN."""
    case = blocky_agent_case(4)
    num_keys = case.k.shape[2]
    ids = case.agent_ids[0]
    # Agent 3 is seen by agent 3 only: poison its keys, check every other agent's queries.
    poisoned = ids == 3
    k, v = case.k.clone(), case.v.clone()
    k[:, :, poisoned], v[:, :, poisoned] = float("nan"), float("nan")
    # Causal: the queries of the first aligned block never reach keys past it.
    first_block = torch.arange(num_keys, device=DEVICE) < TILE_ALIGNED
    q = case.q.clone().requires_grad_()
    out = run_triton(q, k, v, causal=True, agent_ids=case.agent_ids, agent_visibility=case.agent_visibility)
    dq, = torch.autograd.grad(out, (q,), torch.ones_like(out))
    expected, _ = reference_outputs(case, torch.float32)
    rows = ~poisoned
    assert torch.isfinite(out[:, :, rows]).all() and torch.isfinite(dq[:, :, rows]).all()
    torch.testing.assert_close(out[:, :, rows], expected[:, :, rows], atol=1e-4, rtol=1e-4)

    causal_k, causal_v = case.k.clone(), case.v.clone()
    causal_k[:, :, ~first_block], causal_v[:, :, ~first_block] = float("nan"), float("nan")
    out = run_triton(case.q, causal_k, causal_v, causal=True)
    assert torch.isfinite(out[:, :, first_block]).all()


def _tile_list_case(num_queries, num_keys, num_agents, causal, padded, seed):
    generator = torch.Generator().manual_seed(seed)
    # Agents speak in turns of random lengths (a few positions interleave), everyone sees
    # agent 0 and itself, others at random; in batch 0 agent 1 sees nobody and speaks at
    # positions 8-23, agent 2 at 24-39.
    turns = torch.randint(3, 20, (2, num_keys), generator=generator).cumsum(1)
    ids = torch.searchsorted(turns, torch.arange(num_keys).expand(2, -1).contiguous()) % num_agents
    ids[:, ::13] = torch.randint(0, num_agents, ids[:, ::13].shape, generator=generator)
    ids[0, 8:24], ids[0, 24:40] = 1, 2
    visibility = torch.rand(2, num_agents, num_agents, generator=generator) < 0.3
    visibility |= torch.eye(num_agents, dtype=torch.bool)
    visibility[:, :, 0] = True
    visibility[0, 1] = False
    seq_lens = torch.randint(0, num_keys + 1, (2,), generator=generator) if padded else None
    return ids.to(torch.int32).to(DEVICE), visibility.to(DEVICE), seq_lens


@pytest.mark.parametrize("num_agents", [3, 40])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("padded", [False, True], ids=["", "padded"])
@pytest.mark.parametrize("sizes", [(37, 37), (5, 61), (64, 64)], ids=lambda s: f"Nq{s[0]}-Nk{s[1]}")
def test_tile_lists_against_the_dense_mask(sizes, padded, causal, num_agents):
    """Every allowed (query, key) pair lies in a listed tile; full tiles are entirely allowed;
    skipped tiles entirely masked; partial tiles need no causal mask (only diagonal ones do);
    the lists and transposed lists hold exactly the classified blocks, in class order; the
    32-bit agent words give the agent rule and the seq_len cut."""
    from agentfast.attention import dense_mask
    from agentfast.kernels import flash_attention as fa

    num_queries, num_keys = sizes
    ids, visibility, seq_lens = _tile_list_case(num_queries, num_keys, num_agents, causal, padded,
                                                seed=num_queries + num_agents)
    bitmask = visibility_to_bitmask(visibility)
    block = 8
    lists = fa.tile_lists(ids, bitmask, seq_lens.to(DEVICE) if padded else None, num_queries, causal, block=block)
    allowed = dense_mask(2, num_queries, num_keys, torch.device(DEVICE), causal=causal,
                         seq_lens=seq_lens.to(DEVICE) if padded else None, agent_ids=ids,
                         visibility=visibility)[:, 0].cpu()
    position_ok = dense_mask(1, num_queries, num_keys, torch.device("cpu"), causal=causal)[0, 0]
    classes = lists.classes.cpu()
    assert classes.shape == (2, -(-num_queries // block), -(-num_keys // block))
    for b in range(2):
        for qb in range(classes.shape[1]):
            for kb in range(classes.shape[2]):
                tile = (slice(qb * block, (qb + 1) * block), slice(kb * block, (kb + 1) * block))
                kind = int(classes[b, qb, kb])
                if kind == fa.EMPTY:
                    assert not allowed[b][tile].any(), (b, qb, kb)
                if kind == fa.FULL:  # loaded unmasked: every key of the block must exist and be valid
                    assert allowed[b][tile].all() and (kb + 1) * block <= num_keys, (b, qb, kb)
                    assert not padded or (kb + 1) * block <= seq_lens[b], (b, qb, kb)
                if kind in (fa.FULL, fa.PARTIAL):
                    assert position_ok[tile].all(), f"tile {(qb, kb)} needs the causal mask but is not diagonal"
                if kind == fa.DIAGONAL:
                    assert causal and not position_ok[tile].all() and position_ok[tile].any()
    if num_queries == num_keys and not padded:  # the layout above makes both kinds in batch 0
        assert (classes[0] == fa.FULL).any() and (classes[0] == fa.EMPTY).any()

    for counts, indices, grid in ((lists.counts, lists.indices, classes),
                                  (lists.counts_t, lists.indices_t, classes.transpose(1, 2))):
        counts, indices = counts.cpu().long(), indices.cpu().long()
        for b in range(2):
            for row in range(grid.shape[1]):
                start = 0
                for kind in (fa.FULL, fa.PARTIAL, fa.DIAGONAL):
                    listed = indices[b, row, start:start + counts[b, row, kind]].tolist()
                    expected = torch.nonzero(grid[b, row] == kind).flatten().tolist()
                    assert listed == expected, (b, row, kind)
                    start += counts[b, row, kind]

    words = lists.query_words.shape[1]
    assert words == (1 if num_agents <= 32 else 2)
    query_words, key_words = lists.query_words.cpu().long(), lists.key_words.cpu().long()
    agent_rule = torch.zeros(2, num_queries, num_keys, dtype=torch.bool)
    for w in range(words):
        agent_rule |= (query_words[:, w, :, None] & key_words[:, w, None, :]) != 0
    expected = dense_mask(2, num_queries, num_keys, torch.device(DEVICE), causal=False,
                          seq_lens=seq_lens.to(DEVICE) if padded else None, agent_ids=ids,
                          visibility=visibility)[:, 0].cpu()
    assert torch.equal(agent_rule, expected)


@pytest.mark.parametrize("offset", [0, 1, 15, 16, 17, TILE_ALIGNED - 1, TILE_ALIGNED + 1])
def test_agent_lists_at_every_alignment_of_the_diagonal(offset):
    """Queries end at Nk (Nk - Nq = offset), so the causal diagonal crosses the list blocks and
    the kernel sub-tiles at different places; agents change every few positions."""
    num_queries = TILE_ALIGNED + 5
    case = make_case(1, 1, num_queries, num_queries + offset, 16, device=DEVICE, causal=True, padding=True,
                     agents=4, seed=offset)
    case.agent_ids = ((torch.arange(num_queries + offset) // 6) % 4)[None].to(DEVICE)
    case.label += f"-offset{offset}"
    check_backend(case, run_triton)


# --------------------------------------------------------------------------- layout, determinism


def test_strided_qkv_split_matches_contiguous():
    """q, k, v as views of one fused projection (no copies): same bits as contiguous inputs."""
    batch, num_keys, heads, head_dim = 2, 29, 2, 24
    fused = torch.randn(batch, num_keys, 3, heads, head_dim, device=DEVICE, requires_grad=True)
    q, k, v = (fused[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    mask = dict(seq_lens=torch.tensor([20, 29], device=DEVICE),
                agent_ids=torch.randint(0, 3, (batch, num_keys), device=DEVICE),
                agent_visibility=torch.rand(3, 3, device=DEVICE) < 0.6)
    out = run_triton(q, k, v, **mask)
    grad_out = torch.randn_like(out)
    (d_fused,) = torch.autograd.grad(out, (fused,), grad_out)
    dense = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    out_dense = run_triton(*dense, **mask)
    grads_dense = torch.autograd.grad(out_dense, dense, grad_out)
    assert torch.equal(out, out_dense)
    for i, g in enumerate(grads_dense):
        assert torch.equal(d_fused[:, :, i].transpose(1, 2), g)


def test_batch_heads_fold_over_two_grid_axes(monkeypatch):
    """CUDA caps grid axes 1 and 2 at 65535, so batch x heads (the agent summaries: batch) folds
    over both and the trailing programs idle. A cap of 4 exercises the fold at small sizes."""
    from agentfast.kernels import flash_attention as fa

    monkeypatch.setattr(fa, "MAX_GRID_YZ", 4)
    assert fa._folded_grid(3, 10) == (3, 4, 3) and fa._folded_grid(3, 4) == (3, 4, 1)
    check_backend(make_case(5, 2, 21, 30, 16, device=DEVICE, causal=True, padding=True, agents=3, seed=13),
                  run_triton)


def test_autotune_pruning_reads_keyword_launch_arguments(monkeypatch):
    """The autotuner gives the pruner positional launch arguments in named_args and keyword ones
    in kwargs; the launchers pass the buckets by keyword. (GPU-only path: under the
    interpreter there is one config and nothing to prune.)"""
    import triton

    from agentfast.kernels import flash_attention as fa

    monkeypatch.setattr(fa, "INTERPRETED", False)
    configs = fa._configs(fa._FORWARD_SHAPES)

    def launch_args(num_queries, head_dim):
        q = torch.zeros(1, 1, num_queries, head_dim)
        k = torch.zeros(1, 1, 300, head_dim)
        return fa._static_args(q, k, True, fa._MaskArgs(q, k, None, None, None, True))

    decode = launch_args(1, 256)
    kept = fa._prune(configs, {}, **decode)
    assert [c.kwargs for c in kept] == [c.kwargs for c in fa._prune(configs, dict(decode))]
    assert kept and all(c.kwargs["BLOCK_M"] == 16 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64
                        for c in kept)
    prefill = fa._prune(configs, {}, **launch_args(300, 64))
    assert {c.kwargs["BLOCK_M"] for c in prefill} == {c.kwargs["BLOCK_M"] for c in configs} - {16}
    assert all(isinstance(c, triton.Config) for c in prefill)


# --------------------------------------------------------------------------- support and ops


def _call(dtype=torch.float32, head_dim=32, device=DEVICE) -> AttentionCall:
    q = torch.zeros(1, 1, 4, head_dim, dtype=dtype, device=device)
    return AttentionCall(q, q, q, True, None, None, None, None, 1.0)


def test_why_not_explains_what_it_cannot_do(monkeypatch):
    backend = get_backend("triton")
    assert backend.why_not(_call()) is None
    assert "head dim" in backend.why_not(_call(head_dim=264))
    assert "float64" in backend.why_not(_call(torch.float64))
    if not ON_GPU:
        assert "bfloat16" in backend.why_not(_call(torch.bfloat16))
        monkeypatch.setattr(triton_fused, "_kernels_interpreted", False)
        assert backend.why_not(_call()) == "runs on CUDA; on CPU only under TRITON_INTERPRET=1"
    monkeypatch.setattr(triton_fused, "_TRITON_FOUND", False)
    assert "triton is not installed" in backend.why_not(_call())


def test_importing_agentfast_does_not_import_triton():
    code = ("import sys, agentfast; from agentfast.attention import get_backend; get_backend('triton');"
            "assert 'triton' not in sys.modules, 'triton imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parents[1]))


def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter never runs the GPU compiler: lower every kernel launch of a forward and
    backward call to an sm_90 cubin (bf16, an odd head dim; causal, causal + seq_lens, causal +
    agents, seq_lens + 40 agents) so compiler errors fail CI on CPU machines too."""
    code = ("from agentfast.attention.backends.triton_fused import load_kernels; load_kernels();"
            "from agentfast.kernels.compile_check import main; main(['--arch', '90', '--dtypes', 'bf16',"
            " '--head-dims', '40', '--masks', 'causal,padding,agents,padding+agents'])")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=str(Path(__file__).parents[1]), timeout=600)
    assert result.returncode == 0 and "all kernels compiled" in result.stdout, result.stderr[-3000:]


def _op_inputs(dtype=torch.float32):
    case = make_case(1, 2, 19, 24, 24, dtype=dtype, device=DEVICE, padding=True, agents=3, seed=2, kv_heads=1)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    q, k, v = (t.requires_grad_() for t in (case.q, case.k, case.v))
    return (q, k, v, call.seq_lens.int(), call.agent_ids.int(), call.agent_bitmask, True, call.scale)


def test_opcheck_forward_and_backward():
    op = triton_fused.load_kernels()
    inputs = _op_inputs()
    torch.library.opcheck(op.attention_forward, inputs)
    out, lse = op.attention_forward(*inputs)
    q, k, v, seq_lens, agent_ids, bitmask, causal, scale = inputs
    grad_lse = torch.randn_like(lse).masked_fill(torch.isinf(lse), 0.0)
    # Detached: the backward op is first order only (differentiating it is an error by design).
    backward_inputs = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
                       grad_lse, seq_lens, agent_ids, bitmask, causal, scale)
    torch.library.opcheck(op.attention_backward, backward_inputs)


def test_compile_fullgraph_matches_eager():
    get_backend("triton")  # the backend registry imports modules with importlib: load it eagerly
    case = make_case(1, 2, 21, 21, 32, device=DEVICE, padding=True, agents=3, seed=4, kv_heads=1)

    def attend(q, k, v):
        return agentfast.attention(q, k, v, backend="triton", **case.mask_kwargs()) * 2.0

    compiled = torch.compile(attend, fullgraph=True)
    results = []
    for fn in (compiled, attend):
        q, k, v = (t.clone().requires_grad_() for t in (case.q, case.k, case.v))
        out = fn(q, k, v)
        results.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1025, 1025, 64), (257, 1025, 128), (200, 200, 256), (1, 4099, 128),
                                   (1537, 1537, 40)], ids=lambda s: f"Nq{s[0]}-Nk{s[1]}-D{s[2]}")
def test_large_shapes_on_gpu(shape, dtype):
    num_queries, num_keys, head_dim = shape
    check_backend(make_case(2, 3, num_queries, num_keys, head_dim, dtype=dtype, device="cuda",
                            padding=True, agents=6, seed=9), run_triton)
    check_backend(make_case(2, 3, num_queries, num_keys, head_dim, dtype=dtype, device="cuda"), run_triton)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_large_on_gpu(kv_heads):
    check_backend(make_case(2, 8, 1025, 1025, 64, dtype=torch.bfloat16, device="cuda", kv_heads=kv_heads,
                            padding=True, agents=6, seed=10), run_triton)
    check_backend(make_case(1, 8, 4, 2049, 128, dtype=torch.float16, device="cuda", kv_heads=kv_heads, seed=11),
                  run_triton)


@pytest.mark.gpu
def test_tile_aligned_agents_large_on_gpu():
    check_backend(blocky_agent_case(16, dtype=torch.bfloat16, head_dim=64), run_triton)


def test_compiled_model_fullgraph():
    """A model with attn_backend="triton" compiles with fullgraph=True and matches eager, with
    gradients. On CPU the graph runs through aot_eager: Inductor's CPU code generation is not
    what is under test, and it would cost most of this file's time budget."""
    from agentfast.models import ActionTransformer

    get_backend("triton")  # the backend registry imports modules with importlib: load it eagerly
    torch.manual_seed(0)
    width, steps = (64, 40) if ON_GPU else (32, 7)
    model = ActionTransformer(state_dim=6, action_dim=3, embed_dim=width, num_layers=2 if ON_GPU else 1,
                              num_heads=2, hidden_dim=width, max_seq_len=64, dropout=0.0,
                              attn_backend="triton").to(DEVICE)
    states, actions = torch.randn(3, steps, 6, device=DEVICE), torch.randn(3, steps, 3, device=DEVICE)
    seq_lens = torch.tensor([steps, steps // 2, 1], device=DEVICE)
    eager_preds, eager_values = model(states, actions, seq_lens=seq_lens)
    (eager_preds.sum() + eager_values.sum()).backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    preds, values = compiled(states, actions, seq_lens=seq_lens)
    (preds.sum() + values.sum()).backward()
    torch.testing.assert_close(preds, eager_preds, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(values, eager_values, atol=2e-3, rtol=2e-3)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == eager_grads.keys() and any("attn" in name or "qkv" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=2e-3, rtol=2e-3, msg=name)
