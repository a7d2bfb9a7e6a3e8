"""The ``cuda`` backend's kernels against the reference: the numerics tests of the CPU path
(docs/attention-contract.md, "How the backends are tested"), plus head dims up to 256, dtypes,
strides and the lse output.

Every numerics test runs on two targets: ``gpu`` (agentfast._C on a CUDA device; skipped
without one) and ``emulated``: the same kernels (csrc/cuda/masked_attention_kernels.cuh) and
host code compiled for the CPU against tests/cuda_emulation, where each CUDA thread is a
fiber and warps exchange tensor-core fragments lane by lane as the PTX ISA lays them out
(tests/test_cuda_emulation.py checks the emulation itself). The emulation checks the
kernels' indexing, masking, tile skipping, synchronisation and numerics on any machine;
speed, streams and devices need the GPU tests.
"""

from __future__ import annotations

import pytest
import torch

from agentfast.attention import attention, dense_mask, get_backend, make_call
from agentfast.attention.backends.extension import masked_attention
from tests.attention_cases import MASK_FEATURES, assert_reruns_bitwise_identical, check_backend, make_case, reference_outputs


@pytest.fixture(scope="session")
def emulated_kernels():
    """The CUDA kernels built for the CPU against the emulation."""
    from tests.cuda_emulation.build import emulated_kernels

    return emulated_kernels()


class _EmulatedAttention(torch.autograd.Function):
    """(out, lse) of the emulated kernels, differentiable as the op is (lse included)."""

    @staticmethod
    def forward(ctx, module, q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale):
        out, lse = module.forward(q, k, v, seq_lens, agent_ids, agent_bitmask, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask = (seq_lens, agent_ids, agent_bitmask, causal, scale)
        ctx.module = module
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out
        delta = (grad_out.float() * out.float()).sum(-1)  # what backward_row_delta computes
        if grad_lse is not None:
            delta = delta - grad_lse.float()
        grads = ctx.module.backward(grad_out, q, k, v, lse, delta, *ctx.mask)
        return (None, *grads, None, None, None, None, None)


def emulated_attention(module, q, k, v, **mask_kwargs):
    call = make_call(q, k, v, **mask_kwargs)
    return _EmulatedAttention.apply(module, q, k, v, call.seq_lens, call.agent_ids, call.agent_bitmask,
                                    call.causal, call.scale)


class Target:
    """Where the kernels run: the GPU, or the CPU emulation."""

    def __init__(self, name: str, request) -> None:
        self.name = name
        if name == "gpu":
            self.device = "cuda"
            reason = get_backend("cuda").unavailable_reason()
            if reason is not None:
                pytest.fail(f"the cuda backend is unavailable on a CUDA machine: {reason}")
            self.module = None
        else:
            self.device = "cpu"
            self.module = request.getfixturevalue("emulated_kernels")

    def __call__(self, q, k, v, **mask_kwargs):
        """The attention output: ``attention(..., backend="cuda")`` on the GPU."""
        if self.module is None:
            return run_cuda(q, k, v, **mask_kwargs)
        return emulated_attention(self.module, q, k, v, **mask_kwargs)[0]

    def with_lse(self, q, k, v, **mask_kwargs):
        if self.module is None:
            call = make_call(q, k, v, **mask_kwargs)
            return masked_attention(q, k, v, causal=call.causal, scale=call.scale, seq_lens=call.seq_lens,
                                    agent_ids=call.agent_ids, agent_bitmask=call.agent_bitmask)
        return emulated_attention(self.module, q, k, v, **mask_kwargs)


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "emulated"])
def target(request) -> Target:
    return Target(request.param, request)


DEVICE = "cuda"  # of the GPU-only tests


def run_cuda(q, k, v, **kwargs):
    return attention(q, k, v, backend="cuda", **kwargs)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("features", list(MASK_FEATURES), ids=str)
def test_mask_features_match_reference(features, dtype, target):
    case = make_case(2, 2, 97, head_dim=40, dtype=dtype, device=target.device, seed=3, **MASK_FEATURES[features])
    check_backend(case, target)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize(
    "num_queries,num_keys,head_dim",
    [(1, 1, 24), (17, 17, 64), (1, 97, 40), (17, 97, 128), (97, 130, 24), (1025, 1025, 64),
     (130, 130, 96), (70, 70, 160), (65, 65, 256)],
    ids=lambda x: str(x),
)
def test_odd_sizes_and_head_dims(num_queries, num_keys, head_dim, dtype, target):
    batch, heads = (1, 2) if num_keys > 1000 else (2, 2)
    case = make_case(batch, heads, num_queries, num_keys, head_dim, dtype=dtype, device=target.device,
                     causal=True, padding=True, agents=3, seed=5)
    check_backend(case, target)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_agent_turns_exercise_tile_skipping(dtype, target):
    batch, heads, length, head_dim = 2, 2, 640, 64
    case = make_case(batch, heads, length, head_dim=head_dim, dtype=dtype, device=target.device, causal=True, seed=7)
    turn = torch.arange(length) // 64
    case.agent_ids = torch.stack([turn % 3, (turn + 1) % 3]).to(target.device)
    visibility = torch.eye(3, dtype=torch.bool)
    visibility[0] = True
    case.agent_visibility = visibility.to(target.device)
    check_backend(case, target)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the poisoned rows, by design
def test_skipped_tiles_are_never_loaded(target):
    """Poison (NaN) the keys/values that the mask empties by whole 64-key tiles (head dim <= 64):
    tiles of an agent no query tile sees, and causal tiles past the diagonal. A kernel that
    loads and masks them instead of skipping them would turn 0 * NaN into NaN."""
    tile, num_agents = 64, 4
    num_keys = num_agents * tile + tile // 2
    case = make_case(1, 2, num_keys, head_dim=32, device=target.device, causal=True, seed=3)
    ids = (torch.arange(num_keys) // tile) % num_agents
    visibility = torch.eye(num_agents, dtype=torch.bool)
    visibility[1:, :-1] |= torch.eye(num_agents - 1, dtype=torch.bool)  # a sees a and a - 1
    case.agent_ids, case.agent_visibility = ids[None].to(target.device), visibility.to(target.device)
    poisoned = (ids == num_agents - 1).to(target.device)  # seen by its own agent only
    k, v = case.k.clone(), case.v.clone()
    k[:, :, poisoned], v[:, :, poisoned] = float("nan"), float("nan")
    q = case.q.clone().requires_grad_()
    out = target(q, k, v, **case.mask_kwargs())
    dq, = torch.autograd.grad(out, (q,), torch.ones_like(out))
    expected, _ = reference_outputs(case, torch.float32)
    rows = ~poisoned
    assert torch.isfinite(out[:, :, rows]).all() and torch.isfinite(dq[:, :, rows]).all()
    torch.testing.assert_close(out[:, :, rows], expected[:, :, rows], atol=1e-4, rtol=1e-4)

    first_tile = torch.arange(num_keys, device=target.device) < tile
    causal_k, causal_v = case.k.clone(), case.v.clone()
    causal_k[:, :, ~first_tile], causal_v[:, :, ~first_tile] = float("nan"), float("nan")
    out = target(case.q, causal_k, causal_v, causal=True)
    assert torch.isfinite(out[:, :, first_tile]).all()


def test_agent_that_sees_nobody_gets_zero_output_and_gradient(target):
    case = make_case(1, 2, 40, head_dim=16, causal=False, device=target.device, seed=11)
    case.agent_ids = (torch.arange(40) % 2).unsqueeze(0).to(target.device)
    case.agent_visibility = torch.tensor([[True, True], [False, False]], device=target.device)
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    out = target(q, k, v, **case.mask_kwargs())
    blind = case.agent_ids[0] == 1
    assert torch.equal(out[0, :, blind], torch.zeros_like(out[0, :, blind]))
    out.square().sum().backward()
    assert torch.equal(q.grad[0, :, blind], torch.zeros_like(q.grad[0, :, blind]))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_strided_inputs_from_a_fused_projection(dtype, target):
    batch, length, heads, head_dim = 2, 45, 3, 64
    qkv = torch.randn(batch, length, 3, heads, head_dim, device=target.device, dtype=dtype)
    case = make_case(batch, heads, length, head_dim=head_dim, dtype=dtype, device=target.device, causal=True, agents=2)
    case.q, case.k, case.v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not case.q.is_contiguous()
    check_backend(case, target)


@pytest.mark.parametrize("kv_heads", [1, 2, 4], ids=lambda h: f"Hkv{h}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_grouped_query_attention_matches_reference(dtype, kv_heads, target):
    """k/v with 1 (multi-query), 2 or all 4 heads, read in place: dK/dV sum over each
    group's query heads (several query tiles per head, so the dK/dV kernel walks the group's
    heads and their tiles)."""
    case = make_case(2, 4, 70, 90, 40, dtype=dtype, kv_heads=kv_heads, device=target.device, causal=True,
                     padding=True, agents=3, seed=21)
    check_backend(case, target)


@pytest.mark.parametrize("kv_heads", [4, 1], ids=lambda h: f"Hkv{h}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_rerun_is_bitwise_identical(dtype, kv_heads, target):
    case = make_case(2, 4, 300, head_dim=64, dtype=dtype, kv_heads=kv_heads, device=target.device, causal=True,
                     agents=4, padding=True)

    assert_reruns_bitwise_identical(case, target)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("num_queries,num_keys,head_dim", [(1, 300, 80), (33, 300, 96), (100, 257, 40)],
                         ids=lambda x: str(x))
def test_queries_against_a_longer_cache(num_queries, num_keys, head_dim, dtype, target):
    # Bottom-right alignment across several key tiles, head dims the wmma tiles pad.
    case = make_case(2, 2, num_queries, num_keys, head_dim, dtype=dtype, device=target.device, causal=True,
                     padding=True, agents=4, seed=13)
    check_backend(case, target)


@pytest.mark.parametrize("head_dim", [40, 96, 160], ids=lambda d: f"D{d}")
def test_every_alignment_of_the_causal_diagonal_with_the_tiles(head_dim, target):
    # Query offsets Nk - Nq = 0..65 put the diagonal at every position within the key tiles
    # (16 to 64 keys, per head-dim bucket), where a tile flips between "fully visible" and
    # "needs the mask".
    for offset in range(66):
        case = make_case(1, 1, 66, 66 + offset, head_dim, device=target.device, causal=True, seed=offset)
        case.label += f"-offset{offset}"
        check_backend(case, target)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_sixty_four_agents_use_the_top_bit(dtype, target):
    # Agent 63 is bit 63 of the int64 bitmask: the sign bit, read as an unsigned bit.
    case = make_case(2, 2, 150, head_dim=40, dtype=dtype, device=target.device, causal=True, padding=True,
                     agents=64, seed=17)
    case.agent_ids[:, ::5] = 63
    check_backend(case, target)


def test_keys_nobody_sees_get_exactly_zero_gradient(target):
    case = make_case(2, 2, 70, head_dim=24, dtype=torch.bfloat16, device=target.device, causal=False, padding=True,
                     agents=3, seed=23)
    case.agent_visibility[:, :, 2] = False  # nobody sees agent 2
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    out = target(q, k, v, **case.mask_kwargs())
    out.backward(torch.randn_like(out))
    unseen = (case.agent_ids == 2) | (torch.arange(70, device=target.device) >= case.seq_lens[:, None])
    for grad in (k.grad, v.grad):
        assert torch.equal(grad.transpose(1, 2)[unseen], torch.zeros_like(grad.transpose(1, 2)[unseen]))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_strided_inputs_give_the_bits_of_contiguous_copies(dtype, target):
    # check_backend clones its inputs, and a clone of a qkv slice is contiguous: this test
    # hands the kernels the strided views themselves.
    batch, length, heads, head_dim = 2, 45, 3, 40
    qkv = torch.randn(batch, length, 3, heads, head_dim, device=target.device, dtype=dtype)
    case = make_case(batch, heads, length, head_dim=head_dim, dtype=dtype, device=target.device, causal=True, agents=2,
                     padding=True)

    def run(q, k, v):
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        out = target(q, k, v, **case.mask_kwargs())
        out.backward(torch.ones_like(out))
        return out.detach(), q.grad, k.grad, v.grad

    views = [qkv[:, :, i].transpose(1, 2) for i in range(3)]
    copies = [t.contiguous() for t in views]
    assert not views[0].is_contiguous()
    for a, b in zip(run(*views), run(*copies)):
        assert torch.equal(a, b)


def test_inputs_strided_along_the_head_dim(target):
    case = make_case(2, 2, 45, head_dim=40, dtype=torch.float16, device=target.device, causal=True, agents=2, seed=29)
    case.q, case.k, case.v = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (case.q, case.k, case.v))
    assert case.q.stride(-1) != 1
    check_backend(case, target)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_head_dims_sliced_from_wider_rows(dtype, target):
    # Rows 16-byte aligned with a head dim that is not a multiple of 8 elements: 16-byte chunks
    # up to the ragged end of each row, element by element past it. A head dim of 36 in rows
    # of 36 is not aligned past the first row and takes the element path throughout.
    case = make_case(2, 2, 45, head_dim=36, dtype=dtype, device=target.device, causal=True, agents=2,
                     padding=True, seed=31)
    # NaN past the head dim: a kernel that reads there poisons its results.
    wide = [torch.nn.functional.pad(t, (0, 4), value=float("nan")) for t in (case.q, case.k, case.v)]
    case.q, case.k, case.v = (t[..., :36] for t in wide)
    assert case.q.stride(-2) == 40 and case.q.stride(-1) == 1
    check_backend(case, target)
    check_backend(make_case(2, 2, 45, head_dim=36, dtype=dtype, device=target.device, causal=True, seed=31), target)


def test_lse_matches_logsumexp_and_is_differentiable(target):
    # The lse output's gradient goes through delta = rowsum(dO * O) - grad_lse.
    case = make_case(2, 2, 30, 50, 40, device=target.device, causal=True, agents=3, padding=True, fully_masked_row=True,
                     seed=4)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    _, lse = target.with_lse(q, k, v, **case.mask_kwargs())
    allowed = dense_mask(2, 30, 50, q.device, causal=True, seq_lens=call.seq_lens,
                         agent_ids=call.agent_ids, visibility=call.visibility)
    q2, k2 = (t.detach().double().requires_grad_(True) for t in (case.q, case.k))
    scores = (q2 @ k2.transpose(-1, -2) * call.scale).masked_fill(~allowed, float("-inf"))
    expected = torch.logsumexp(scores, dim=-1)
    assert torch.equal(torch.isfinite(lse), torch.isfinite(expected))
    torch.testing.assert_close(lse.double(), expected, atol=1e-4, rtol=1e-5)
    weights = torch.randn(lse.shape, device=target.device, dtype=torch.float64) * torch.isfinite(expected)
    (lse.double().nan_to_num(neginf=0.0) * weights).sum().backward()
    (expected.nan_to_num(neginf=0.0) * weights).sum().backward()
    torch.testing.assert_close(q.grad.double(), q2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(k.grad.double(), k2.grad, atol=1e-4, rtol=1e-4)
    assert torch.equal(v.grad, torch.zeros_like(v.grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_more_batch_heads_than_one_grid_dimension_holds(dtype, target):
    # B * H past the gridDim.y limit folds over grid.y and grid.z, rounded up, so one trailing
    # CTA has no (batch, head) and must return. The limit is 65535 on a GPU: B * H = 65569 =
    # 2 x 32785 - 1; the emulation lowers it to 4: B * H = 5 = 2 x 3 - 1.
    batch, heads = (3857, 17) if target.name == "gpu" else (5, 1)
    case = make_case(batch, heads, 3, 5, head_dim=16, dtype=dtype, device=target.device, causal=True, padding=True,
                     seed=19)
    check_backend(case, target)


@pytest.mark.gpu
def test_side_stream_matches_default_stream():
    case = make_case(2, 2, 200, head_dim=64, dtype=torch.bfloat16, device=DEVICE, causal=True, agents=3)
    expected = run_cuda(case.q, case.k, case.v, **case.mask_kwargs())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        actual = run_cuda(case.q, case.k, case.v, **case.mask_kwargs())
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(actual, expected)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    case = make_case(1, 2, 64, head_dim=32, dtype=torch.bfloat16, device="cuda:1", causal=True, agents=2)
    check_backend(case, run_cuda)


@pytest.mark.gpu
def test_opcheck_on_gpu():
    case = make_case(2, 2, 20, 33, 64, dtype=torch.bfloat16, device=DEVICE, causal=True, agents=3, padding=True)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    torch.library.opcheck(torch.ops.agentfast.masked_attention.default,
                          (q, k, v, call.seq_lens, call.agent_ids, call.agent_bitmask, True, call.scale))


@pytest.mark.gpu
def test_compiled_multi_agent_transformer_on_gpu():
    from agentfast.models import MultiAgentTransformer

    torch.manual_seed(0)
    model = MultiAgentTransformer(state_dim=6, action_dim=3, embed_dim=64, num_layers=2, num_heads=2,
                                  hidden_dim=64, max_seq_len=64, max_num_agents=3, dropout=0.0,
                                  attn_backend="cuda").to(DEVICE)
    states, actions = torch.randn(2, 50, 6, device=DEVICE), torch.randn(2, 50, 3, device=DEVICE)
    agent_ids = torch.arange(50, device=DEVICE).remainder(3).unsqueeze(0).repeat(2, 1)
    expected = model(states, agent_ids, actions, agent_mask=torch.eye(3, dtype=torch.bool, device=DEVICE))
    actual = torch.compile(model, fullgraph=True)(states, agent_ids, actions,
                                                  agent_mask=torch.eye(3, dtype=torch.bool, device=DEVICE))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)
