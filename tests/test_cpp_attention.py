"""The ``cpp`` backend (agentfast._C on CPU) against the reference, under the numerics rule of
docs/attention-contract.md ("How the backends are tested")."""

from __future__ import annotations

import pytest
import torch

from agentfast.attention import attention, get_backend, make_call, select_backend, visibility_to_bitmask
from agentfast.attention.backends.extension import masked_attention
from tests.attention_cases import assert_reruns_bitwise_identical, check_backend, make_case, reference_outputs


@pytest.fixture(autouse=True)
def _needs_cpp_backend():
    # The extension is part of the install: a missing build is a failure, not a skip.
    reason = get_backend("cpp").unavailable_reason()
    if reason is not None:
        pytest.fail(f"the cpp backend is unavailable: {reason}")


def run_cpp(q, k, v, **kwargs):
    return attention(q, k, v, backend="cpp", **kwargs)


@pytest.mark.parametrize(
    "num_queries,num_keys,head_dim",
    [(1, 1, 24), (17, 17, 64), (1, 97, 40), (17, 97, 128), (97, 130, 24), (1025, 1025, 64)],
    ids=lambda x: str(x),
)
def test_odd_sizes_and_bottom_right_alignment(num_queries, num_keys, head_dim):
    batch, heads = (1, 1) if num_keys > 1000 else (2, 2)
    case = make_case(batch, heads, num_queries, num_keys, head_dim, causal=True, padding=True, agents=3, seed=5)
    check_backend(case, run_cpp)


def test_every_alignment_of_the_causal_diagonal_with_the_blocks():
    # Query offsets Nk - Nq = 0..129 put the diagonal at every position within the 128-key
    # blocks, where a block flips between "fully visible" and "needs the mask".
    for offset in range(130):
        case = make_case(1, 1, 130, 130 + offset, 16, causal=True, seed=offset)
        case.label += f"-offset{offset}"
        check_backend(case, run_cpp)


def test_agent_turns_exercise_tile_skipping():
    """Agents act in runs of whole key blocks, so blocks are skipped, fully visible or partial."""
    batch, heads, length, head_dim = 2, 2, 320, 32
    case = make_case(batch, heads, length, head_dim=head_dim, causal=True, seed=7)
    turn = torch.arange(length) // 64
    case.agent_ids = torch.stack([turn % 3, (turn + 1) % 3])
    visibility = torch.eye(3, dtype=torch.bool)
    visibility[0] = True  # a hub that sees everyone; the others see only themselves
    case.agent_visibility = visibility
    check_backend(case, run_cpp)


def test_agent_that_sees_nobody_gets_zero_output_and_gradient():
    case = make_case(1, 2, 40, head_dim=16, causal=False, seed=11)
    case.agent_ids = (torch.arange(40) % 2).unsqueeze(0)
    case.agent_visibility = torch.tensor([[True, True], [False, False]])
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    out = run_cpp(q, k, v, **case.mask_kwargs())
    blind = case.agent_ids[0] == 1
    assert torch.equal(out[0, :, blind], torch.zeros_like(out[0, :, blind]))
    out.square().sum().backward()
    assert torch.equal(q.grad[0, :, blind], torch.zeros_like(q.grad[0, :, blind]))
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    check_backend(case, run_cpp)


def test_strided_inputs_from_a_fused_projection():
    batch, length, heads, head_dim = 2, 45, 3, 24
    qkv = torch.randn(batch, length, 3, heads, head_dim)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, N, D], non-contiguous
    assert not q.is_contiguous()
    case = make_case(batch, heads, length, head_dim=head_dim, causal=True, agents=2)
    case.q, case.k, case.v = q, k, v
    check_backend(case, run_cpp)


def check_with_threads(case, threads: int) -> None:
    """The rule and bitwise reruns with torch's CPU threads set to ``threads``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_backend(case, run_cpp)
        assert_reruns_bitwise_identical(case, run_cpp)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 3, 8])
@pytest.mark.parametrize("batch,heads,length", [(1, 1, 600), (1, 2, 300), (3, 1, 260)], ids=str)
def test_backward_splits_key_blocks_when_threads_outnumber_heads(threads, batch, heads, length):
    """Fewer batch x head rows than threads: the backward deals key blocks out to several
    tasks and sums their dQ shares; gradients still follow the rule and reruns match bitwise."""
    case = make_case(batch, heads, length, head_dim=32, causal=True, agents=3, padding=True, seed=9)
    check_with_threads(case, threads)


@pytest.mark.parametrize("threads", [1, 3])
def test_grouped_query_backward_split_over_threads_is_deterministic(threads):
    """One (batch, kv head) and more threads than that: the key blocks of the multi-query
    backward are dealt to several tasks, each owning the dQ of all four query heads."""
    case = make_case(1, 4, 300, head_dim=32, kv_heads=1, causal=True, agents=3, padding=True, seed=14)
    check_with_threads(case, threads)


def test_auto_serves_grouped_query_calls_with_cpp():
    case = make_case(1, 4, 8, kv_heads=2, causal=True, agents=2)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    assert select_backend(call).name == "cpp"
    assert get_backend("cpp").why_not(call) is None


def test_gradcheck_float64():
    case = make_case(1, 2, 6, 9, 5, dtype=torch.float64, causal=True, agents=2, padding=True, seed=9)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    inputs = tuple(t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))

    def fn(q, k, v):
        return masked_attention(q, k, v, causal=True, scale=call.scale, seq_lens=call.seq_lens,
                                agent_ids=call.agent_ids, agent_bitmask=call.agent_bitmask)[0]

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("masked", [False, True], ids=["causal", "agents+padding"])
def test_opcheck(masked):
    case = make_case(2, 2, 20, 33, 16, causal=True, agents=3 if masked else 0, padding=masked, seed=6)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    q, k, v = (t.clone().requires_grad_(True) for t in (case.q, case.k, case.v))
    args = (q, k, v, call.seq_lens, call.agent_ids, call.agent_bitmask, True, call.scale)
    torch.library.opcheck(torch.ops.agentfast.masked_attention.default, args)
    out, lse = torch.ops.agentfast.masked_attention(*args)
    backward_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
                     None, call.seq_lens, call.agent_ids, call.agent_bitmask, True, call.scale)
    torch.library.opcheck(torch.ops.agentfast.masked_attention_backward.default, backward_args)


def test_compiled_multi_agent_transformer_fullgraph():
    from agentfast.models import MultiAgentTransformer

    torch.manual_seed(0)
    model = MultiAgentTransformer(state_dim=6, action_dim=3, embed_dim=32, num_layers=2, num_heads=2,
                                  hidden_dim=64, max_seq_len=16, max_num_agents=3, discrete_actions=False,
                                  dropout=0.0, attn_backend="cpp", gradient_checkpointing=False)
    states, actions = torch.randn(2, 12, 6), torch.randn(2, 12, 3)
    agent_ids = torch.arange(12).remainder(3).unsqueeze(0).repeat(2, 1)
    seq_lens = torch.tensor([12, 7])
    visibility = torch.tensor([[True, True, True], [True, True, False], [True, False, True]])
    expected = model(states, agent_ids, actions, seq_lens=seq_lens, agent_mask=visibility)
    compiled = torch.compile(model, fullgraph=True)
    actual = compiled(states, agent_ids, actions, seq_lens=seq_lens, agent_mask=visibility)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    actual[0][0, :7].sum().backward()  # gradients flow through the compiled custom op
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.action_head.weight.grad is not None


def test_auto_prefers_cpp_for_masked_cpu_calls():
    case = make_case(1, 1, 8, causal=True, agents=2)
    call = make_call(case.q, case.k, case.v, **case.mask_kwargs())
    assert select_backend(call).name == "cpp"


def test_op_rejects_bad_inputs_with_clear_errors():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="must be 4-D"):
        masked_attention(q[0], q, q, causal=True, scale=1.0)
    with pytest.raises(RuntimeError, match="Nq must be <= Nk"):
        masked_attention(torch.randn(1, 1, 5, 8), q, q, causal=True, scale=1.0)
    with pytest.raises(RuntimeError, match="agent_ids and agent_bitmask must be given together"):
        masked_attention(q, q, q, causal=True, scale=1.0, agent_ids=torch.zeros(1, 4, dtype=torch.long))
    bitmask = visibility_to_bitmask(torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"agent_ids\[0, 3\] = 7 is outside \[0, 2\)"):
        masked_attention(q, q, q, causal=True, scale=1.0, agent_ids=torch.tensor([[0, 1, 0, 7]]),
                         agent_bitmask=bitmask)
    with pytest.raises(RuntimeError, match="supports float32, float64, float16 and bfloat16"):
        masked_attention(*(torch.ones(1, 1, 4, 8, dtype=torch.int32),) * 3, causal=True, scale=1.0)
    reason = get_backend("cuda").why_not(make_call(q, q, q))
    assert reason is not None and ("cpu" in reason or "CUDA" in reason)


def test_cuda_backend_says_which_gpus_cannot_run_it(monkeypatch):
    """The cuda backend's why_not against described devices (no GPU needed): a Hopper card
    has room for every kernel; a card with less shared memory per block than a kernel needs
    is refused with the figures; a Turing card has no bf16 tensor-core path; a call without
    gradients needs room for the forward kernel alone."""
    import types

    from agentfast.attention.backends import extension

    if not extension._BUILT_WITH_CUDA:
        pytest.skip("agentfast._C was built without its CUDA kernels")
    backend = get_backend("cuda")
    needs = extension._EXTENSION.cuda_shared_memory_bytes

    def call(dtype, head_dim, needs_grad=True):
        return types.SimpleNamespace(device=torch.device("cuda"), dtype=dtype, head_dim=head_dim,
                                     needs_grad=needs_grad, group_size=1)

    def gpu(name, major, minor, kib):
        properties = types.SimpleNamespace(name=name, major=major, minor=minor,
                                           shared_memory_per_block_optin=kib * 1024)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)

    gpu("H100", 9, 0, 227)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert all(backend.why_not(call(dtype, head_dim)) is None for head_dim in (24, 64, 128, 256))
    # Every configuration fits 163 KiB (A100); fp16/bf16 at head dim <= 128 fit 99 KiB (sm_86/89).
    assert all(needs(fp32, head_dim, True) <= 163 * 1024 for fp32 in (True, False) for head_dim in (64, 128, 256))
    assert all(needs(False, head_dim, True) <= 99 * 1024 for head_dim in (64, 128))
    gpu("L4", 8, 9, 99)
    assert backend.why_not(call(torch.bfloat16, 64)) is None
    reason = backend.why_not(call(torch.bfloat16, 256))
    assert reason is not None and "shared memory" in reason and "L4 allows 99 KiB" in reason
    gpu("T4", 7, 5, 64)
    assert "compute capability 8.0+" in backend.why_not(call(torch.bfloat16, 64))
    # Room for the forward kernel only: inference is served, training is not.
    forward, both = needs(False, 256, False), needs(False, 256, True)
    assert forward < both
    gpu("a card between", 8, 7, (forward + both) // 2 // 1024)
    assert backend.why_not(call(torch.bfloat16, 256, needs_grad=False)) is None
    assert "with gradients" in backend.why_not(call(torch.bfloat16, 256, needs_grad=True))


def test_reference_outputs_helper_agrees_with_cpp_in_float64():
    """A tight end-to-end check: in float64 the kernel matches the oracle to 1e-12."""
    case = make_case(2, 2, 70, 140, 48, dtype=torch.float64, causal=True, agents=4, padding=True, seed=8)
    expected, _ = reference_outputs(case, torch.float64)
    actual = run_cpp(case.q, case.k, case.v, **case.mask_kwargs())
    assert (actual - expected).abs().max().item() < 1e-12
