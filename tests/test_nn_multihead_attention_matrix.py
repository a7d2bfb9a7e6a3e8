"""agentfast.nn.MultiheadAttention against torch.nn.MultiheadAttention over the input matrix of
torch's own MultiheadAttention tests: batch_first, masks of every kind and dtype,
key_padding_mask, is_causal, add_bias_kv, add_zero_attn, kdim/vdim, bias=False, need_weights,
average_attn_weights, float32/float64, train/eval, grad/no_grad, unbatched inputs. Outputs,
weights and gradients must match torch's except where the drop-in deliberately differs (rows
with no allowed key: 0 here, NaN in torch), and errors must be torch's types (or subclasses).

TorchScript, torch.compile and nested tensors live in test_nn_multihead_attention_modes.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.mha_helpers import (
    ATTN_MASKS,
    KEY_PADDING_MASKS,
    TorchMultiheadAttention,
    compare_grads,
    compare_outputs,
    dead_heads,
    make_pair,
    masks,
    one_thread,  # noqa: F401  (autouse fixture)
    run,
)

from agentfast.nn import MultiheadAttention, MultiheadAttentionError

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched")

E, H, B = 8, 2, 3
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-8)}


def make_inputs(L, S, batch_first, dtype=torch.float32, kdim=E, vdim=E, kind="self", seed=1):
    """kind: "self" (query is key is value), "key_is_value" or "separate"."""
    generator = torch.Generator().manual_seed(seed)
    shape = (lambda n, d: (B, n, d)) if batch_first else (lambda n, d: (n, B, d))
    query = torch.randn(shape(L, E), generator=generator, dtype=dtype)
    if kind == "self":
        return query, query, query
    key = torch.randn(shape(S, kdim), generator=generator, dtype=dtype)
    if kind == "key_is_value":
        return query, key, key
    return query, key, torch.randn(shape(S, vdim), generator=generator, dtype=dtype)


def check(theirs, ours, query, key, value, kwargs, need_weights, grad, dtype=torch.float32, extra_keys=False):
    batch_first = ours.batch_first
    L = query.shape[1] if batch_first else query.shape[0]
    S = key.shape[1] if batch_first else key.shape[0]
    expected, expected_grads = run(theirs, query, key, value, kwargs, grad, need_weights)
    got, got_grads = run(ours, query, key, value, kwargs, grad, need_weights)
    dead = dead_heads(kwargs, B, H, L, S, extra_keys)
    bias = ours.out_proj.bias.detach() if ours.out_proj.bias is not None else None
    compare_outputs(got, expected, dead, bias, batch_first, **TOLERANCE[dtype])
    if grad:
        if dead.any():  # torch's NaN rows poison its gradients; ours must stay finite
            assert all(g is None or torch.isfinite(g).all() for g in got_grads.values())
        else:
            compare_grads(got_grads, expected_grads, **TOLERANCE[dtype])


# Self-attention, every attn_mask kind against every key_padding_mask kind.
@pytest.mark.parametrize("need_weights", [False, "avg", "per_head"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("attn, padding", list(itertools.product(ATTN_MASKS, KEY_PADDING_MASKS)))
def test_mask_matrix_self_attention(attn, padding, batch_first, need_weights):
    theirs, ours = make_pair(E, H, batch_first=batch_first)
    query, key, value = make_inputs(6, 6, batch_first)
    check(theirs, ours, query, key, value, masks(attn, padding, 6, 6, B, H), need_weights, grad=True)


MODE_MASKS = [("none", "none"), ("causal_hint", "right_bool"), ("causal_bool", "random_bool"),
              ("none", "left_bool"), ("float_2d", "right_float"), ("bool_3d", "none")]


# Modes and dtypes: train (no dropout) / eval with gradients, eval without (torch's own
# inference fast path runs there for batch-first self-attention), float32 and float64.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_no_grad"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [False, "avg"])
@pytest.mark.parametrize("attn, padding", MODE_MASKS)
def test_modes_and_dtypes(attn, padding, need_weights, batch_first, mode, dtype):
    theirs, ours = make_pair(E, H, dtype=dtype, batch_first=batch_first)
    for module in (theirs, ours):
        module.train(mode == "train")
    query, key, value = make_inputs(6, 6, batch_first, dtype)
    grad = mode != "eval_no_grad"
    with torch.set_grad_enabled(grad):
        check(theirs, ours, query, key, value, masks(attn, padding, 6, 6, B, H, dtype), need_weights, grad, dtype)


VARIANTS = {
    "bias_false": dict(kwargs=dict(bias=False)),
    "add_bias_kv": dict(kwargs=dict(add_bias_kv=True), extra_keys=True),
    "add_zero_attn": dict(kwargs=dict(add_zero_attn=True), extra_keys=True),
    "bias_kv_and_zero_attn": dict(kwargs=dict(add_bias_kv=True, add_zero_attn=True), extra_keys=True),
    "kdim_vdim": dict(kwargs=dict(kdim=5, vdim=3), inputs=dict(kdim=5, vdim=3, kind="separate")),
    "cross_key_is_value": dict(kwargs={}, inputs=dict(kind="key_is_value")),
    "cross_separate": dict(kwargs={}, inputs=dict(kind="separate")),
}
VARIANT_MASKS = [("none", "none"), ("none", "right_bool"), ("none", "random_bool"), ("float_2d", "none"),
                 ("bool_3d", "right_float"), ("nothing_bool", "left_bool")]


@pytest.mark.parametrize("need_weights", [False, "per_head"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("attn, padding", VARIANT_MASKS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_module_variants(variant, attn, padding, batch_first, need_weights):
    spec = VARIANTS[variant]
    theirs, ours = make_pair(E, H, batch_first=batch_first, **spec["kwargs"])
    L, S = (4, 7) if "inputs" in spec else (6, 6)
    query, key, value = make_inputs(L, S, batch_first, **spec.get("inputs", {}))
    check(theirs, ours, query, key, value, masks(attn, padding, L, S, B, H), need_weights, grad=True,
          extra_keys=spec.get("extra_keys", False))


@pytest.mark.parametrize("need_weights", [False, "avg", "per_head"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("attn, padding", [("none", "none"), ("causal_bool", "right_bool"), ("float_2d", "random_float"),
                                           ("bool_3d", "random_bool")])
def test_unbatched_inputs(attn, padding, batch_first, need_weights):
    """[L, E] inputs: a 1-D key_padding_mask and [num_heads, L, S] masks, as torch takes them."""
    theirs, ours = make_pair(E, H, batch_first=batch_first)
    query = torch.randn(5, E, generator=torch.Generator().manual_seed(3))
    kwargs = masks(attn, padding, 5, 5, 1, H)
    if "key_padding_mask" in kwargs:
        kwargs["key_padding_mask"] = kwargs["key_padding_mask"][0]
    expected, expected_grads = run(theirs, query, query, query, kwargs, True, need_weights)
    got, got_grads = run(ours, query, query, query, kwargs, True, need_weights)
    assert got[0].shape == expected[0].shape == (5, E)
    torch.testing.assert_close(got[0], expected[0], **TOLERANCE[torch.float32])
    if need_weights:
        torch.testing.assert_close(got[1], expected[1], **TOLERANCE[torch.float32])
    compare_grads(got_grads, expected_grads, **TOLERANCE[torch.float32])


# -- deliberate differences --------------------------------------------------------------------


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("L, S", [(6, 6), (4, 7)])
def test_is_causal_without_mask_applies_the_causal_mask(L, S, need_weights):
    """torch raises; the drop-in applies the causal mask, aligned so that the L queries are the
    last L of the S key positions (what torch computes when given that mask)."""
    theirs, ours = make_pair(E, H, batch_first=True)
    query, key, value = make_inputs(L, S, True, kind="self" if L == S else "separate")
    with pytest.raises(RuntimeError):
        theirs(query, key, value, is_causal=True, need_weights=need_weights)
    got = ours(query, key, value, is_causal=True, need_weights=need_weights)
    causal = torch.ones(L, S, dtype=torch.bool).triu(S - L + 1)
    expected = theirs(query, key, value, attn_mask=causal, need_weights=need_weights)
    torch.testing.assert_close(got[0], expected[0], **TOLERANCE[torch.float32])


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("attn, padding", [("none", "full_row_bool"), ("causal_bool", "left_bool")])
def test_fully_masked_rows_are_zero_with_zero_gradient(attn, padding, need_weights):
    """Rows with no allowed key: attention gives 0 (output = out_proj.bias), weights 0, and
    that row's query gets no gradient; torch gives NaN there (its weights path always)."""
    theirs, ours = make_pair(E, H, batch_first=True)
    query = torch.randn(B, 6, E, generator=torch.Generator().manual_seed(4), requires_grad=True)
    kwargs = masks(attn, padding, 6, 6, B, H)
    dead = dead_heads(kwargs, B, H, 6, 6).all(dim=1)
    assert dead.any()
    expected, _ = theirs(query, query, query, need_weights=need_weights, **kwargs)
    if need_weights:
        assert expected[dead].isnan().all()
    out, weights = ours(query, query, query, need_weights=need_weights, **kwargs)
    torch.testing.assert_close(out[dead], ours.out_proj.bias.detach().expand_as(out[dead]))
    if need_weights:
        assert (weights[dead] == 0).all()
    out[dead].sum().backward()  # only the dead rows: their inputs must get nothing back
    assert torch.isfinite(query.grad).all()
    assert (query.grad == 0).all()


# -- errors ------------------------------------------------------------------------------------


def _bad_calls():
    q3, u = torch.randn(5, 3, E), torch.randn(5, E)
    bool_mask = lambda *shape: torch.zeros(*shape, dtype=torch.bool)  # noqa: E731
    seq_first = dict(kwargs={})
    return {
        "query_4d": (seq_first, (torch.randn(1, 5, 3, E), q3, q3), {}),
        "key_2d_for_batched": (seq_first, (q3, u, u), {}),
        "key_3d_for_unbatched": (seq_first, (u, q3, q3), {}),
        "embed_dim": (seq_first, (torch.randn(5, 3, E - 1),) * 3, {}),
        "key_value_shapes": (seq_first, (q3, q3, torch.randn(4, 3, E)), {}),
        "batch_sizes": (seq_first, (q3, torch.randn(5, 2, E), torch.randn(5, 2, E)), {}),
        "kdim": (dict(kwargs=dict(kdim=4, vdim=6)), (q3, torch.randn(5, 3, 5), torch.randn(5, 3, 6)), {}),
        "vdim": (dict(kwargs=dict(kdim=4, vdim=6)), (q3, torch.randn(5, 3, 4), torch.randn(5, 3, 5)), {}),
        "kv_lengths_separate": (dict(kwargs=dict(kdim=4, vdim=6)), (q3, torch.randn(5, 3, 4), torch.randn(4, 3, 6)), {}),
        "int_key_padding_mask": (seq_first, (q3, q3, q3), dict(key_padding_mask=torch.zeros(3, 5, dtype=torch.long))),
        "int_attn_mask": (seq_first, (q3, q3, q3), dict(attn_mask=torch.zeros(5, 5, dtype=torch.int32))),
        "key_padding_mask_shape": (seq_first, (q3, q3, q3), dict(key_padding_mask=bool_mask(3, 4))),
        "key_padding_mask_batch": (seq_first, (q3, q3, q3), dict(key_padding_mask=bool_mask(2, 5))),
        "key_padding_mask_3d": (seq_first, (q3, q3, q3), dict(key_padding_mask=bool_mask(3, 5, 1))),
        "attn_mask_2d_shape": (seq_first, (q3, q3, q3), dict(attn_mask=bool_mask(4, 5))),
        "attn_mask_3d_shape": (seq_first, (q3, q3, q3), dict(attn_mask=bool_mask(2, 5, 5))),
        "attn_mask_1d": (seq_first, (q3, q3, q3), dict(attn_mask=bool_mask(5))),
        "attn_mask_4d": (seq_first, (q3, q3, q3), dict(attn_mask=bool_mask(1, 1, 5, 5))),
        "unbatched_key_padding_mask_2d": (seq_first, (u, u, u), dict(key_padding_mask=bool_mask(1, 5))),
        "unbatched_key_padding_mask_shape": (seq_first, (u, u, u), dict(key_padding_mask=bool_mask(4))),
        "unbatched_attn_mask_3d_shape": (seq_first, (u, u, u), dict(attn_mask=bool_mask(3, 5, 5))),
        "query_dtype": (seq_first, (q3.double(),) * 3, {}),
        "batch_first_batch_sizes": (dict(kwargs=dict(batch_first=True)), (q3, torch.randn(4, 3, E), torch.randn(4, 3, E)), {}),
    }


BAD_CALLS = _bad_calls()


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_forward_calls_raise_torchs_exception_types(case, need_weights):
    spec, args, kwargs = BAD_CALLS[case]
    theirs, ours = make_pair(E, H, **spec["kwargs"])
    with pytest.raises(Exception) as theirs_error:
        theirs(*args, need_weights=need_weights, **kwargs)
    with pytest.raises(theirs_error.type) as ours_error:
        ours(*args, need_weights=need_weights, **kwargs)
    # The drop-in's own checks raise its error class with a message naming the problem;
    # only a dtype clash between input and weights is left to torch's linear layer.
    if case != "query_dtype":
        assert isinstance(ours_error.value, MultiheadAttentionError), ours_error.value


@pytest.mark.parametrize("args, kwargs", [
    ((10, 3), {}), ((0, 2), {}), ((8, -2), {}), ((8, 0), {}),
])
def test_bad_constructor_arguments_raise_torchs_exception_types(args, kwargs):
    with pytest.raises(Exception) as theirs_error:
        TorchMultiheadAttention(*args, **kwargs)
    with pytest.raises(theirs_error.type):
        MultiheadAttention(*args, **kwargs)


def test_unknown_backend_is_refused_at_construction():
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        MultiheadAttention(E, H, backend="fast")
