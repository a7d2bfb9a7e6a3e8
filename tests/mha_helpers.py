"""Shared pieces of the agentfast.nn.MultiheadAttention tests: the two modules with the same
weights, the masks torch's tests use, and a comparison that knows where the two may differ
(rows with no allowed key: NaN in torch, 0 here)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor

from agentfast.nn import MultiheadAttention

TorchMultiheadAttention = torch.nn.modules.activation.MultiheadAttention


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which on a
    shared 2-core machine costs more than the work (10x here). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_pair(embed: int, heads: int, dtype=torch.float32, backend: str = "auto", seed: int = 0, **kwargs):
    """torch's module and the drop-in with identical weights."""
    torch.manual_seed(seed)
    theirs = TorchMultiheadAttention(embed, heads, dtype=dtype, **kwargs)
    ours = MultiheadAttention(embed, heads, dtype=dtype, backend=backend, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


# -- masks, as functions of (L, S, B, H, dtype, generator) --------------------------------------


def _rand(shape, generator) -> Tensor:
    return torch.rand(shape, generator=generator)


def _neg_inf_where(blocked: Tensor, dtype) -> Tensor:
    return torch.zeros(blocked.shape, dtype=dtype).masked_fill(blocked, float("-inf"))


def _causal(L, S) -> Tensor:
    """bool [L, S], True = blocked: query i is key position S - L + i."""
    return torch.ones(L, S, dtype=torch.bool).triu(S - L + 1)


def _sparse_bool(shape, generator) -> Tensor:
    """Random blocked entries that keep key 0 open on every row."""
    blocked = _rand(shape, generator) > 0.6
    blocked[..., 0] = False
    return blocked


def _lengths_mask(lengths, S) -> Tensor:
    return torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]


def _right_lengths(B, S):
    return [S] + [max(1, S - 2 - 2 * i) for i in range(B - 1)]


ATTN_MASKS: dict[str, Callable] = {
    "none": lambda L, S, B, H, dtype, g: {},
    "causal_bool": lambda L, S, B, H, dtype, g: {"attn_mask": _causal(L, S)},
    "causal_float": lambda L, S, B, H, dtype, g: {"attn_mask": _neg_inf_where(_causal(L, S), dtype)},
    "causal_hint": lambda L, S, B, H, dtype, g: {"attn_mask": _neg_inf_where(_causal(L, S), dtype), "is_causal": True},
    "nothing_bool": lambda L, S, B, H, dtype, g: {"attn_mask": torch.zeros(L, S, dtype=torch.bool)},
    "nothing_float": lambda L, S, B, H, dtype, g: {"attn_mask": torch.zeros(L, S, dtype=dtype)},
    "bool_2d": lambda L, S, B, H, dtype, g: {"attn_mask": _sparse_bool((L, S), g)},
    "neg_inf_2d": lambda L, S, B, H, dtype, g: {"attn_mask": _neg_inf_where(_sparse_bool((L, S), g), dtype)},
    "float_2d": lambda L, S, B, H, dtype, g: {"attn_mask": torch.randn(L, S, generator=g).to(dtype)},
    "bool_3d": lambda L, S, B, H, dtype, g: {"attn_mask": _sparse_bool((B * H, L, S), g)},
    "float_3d": lambda L, S, B, H, dtype, g: {"attn_mask": torch.randn(B * H, L, S, generator=g).to(dtype)},
}

KEY_PADDING_MASKS: dict[str, Callable] = {
    "none": lambda S, B, dtype, g: {},
    "right_bool": lambda S, B, dtype, g: {"key_padding_mask": _lengths_mask(_right_lengths(B, S), S)},
    "left_bool": lambda S, B, dtype, g: {"key_padding_mask": _lengths_mask(_right_lengths(B, S), S).flip(1)},
    "random_bool": lambda S, B, dtype, g: {"key_padding_mask": _sparse_bool((B, S), g)},
    "right_float": lambda S, B, dtype, g: {
        "key_padding_mask": _neg_inf_where(_lengths_mask(_right_lengths(B, S), S), dtype)},
    "random_float": lambda S, B, dtype, g: {"key_padding_mask": torch.randn(B, S, generator=g).to(dtype)},
    "full_row_bool": lambda S, B, dtype, g: {"key_padding_mask": _lengths_mask([S] + [0] * (B - 1), S)},
}


def masks(attn: str, padding: str, L: int, S: int, B: int, H: int, dtype=torch.float32, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {**ATTN_MASKS[attn](L, S, B, H, dtype, generator), **KEY_PADDING_MASKS[padding](S, B, dtype, generator)}


# -- where torch and the drop-in may differ ------------------------------------------------------


def blocked_keys(kwargs: dict, B: int, H: int, L: int, S: int) -> Tensor:
    """bool [B, H, L, S]: True where the masks in ``kwargs`` forbid query -> key (independent
    of both modules: read straight from the masks)."""
    blocked = torch.zeros(B, H, L, S, dtype=torch.bool)
    attn_mask, padding = kwargs.get("attn_mask"), kwargs.get("key_padding_mask")
    if attn_mask is not None:
        as_bool = attn_mask if attn_mask.dtype == torch.bool else attn_mask == float("-inf")
        blocked = blocked | (as_bool.reshape(B, H, L, S) if attn_mask.dim() == 3 else as_bool)
    elif kwargs.get("is_causal"):
        blocked = blocked | _causal(L, S)
    if padding is not None:
        as_bool = padding if padding.dtype == torch.bool else padding == float("-inf")
        blocked = blocked | as_bool.reshape(B, 1, 1, S)
    return blocked


def dead_heads(kwargs: dict, B: int, H: int, L: int, S: int, extra_keys: bool = False) -> Tensor:
    """bool [B, H, L]: (query, head) pairs with no allowed key (never with add_bias_kv or
    add_zero_attn, whose extra keys are always allowed)."""
    if extra_keys:
        return torch.zeros(B, H, L, dtype=torch.bool)
    return blocked_keys(kwargs, B, H, L, S).all(dim=-1)


def to_batch_first(t: Tensor, batch_first: bool) -> Tensor:
    return t if batch_first else t.transpose(0, 1)


def compare_outputs(
    ours_out: tuple, theirs_out: tuple, dead: Tensor, out_proj_bias: Tensor | None, batch_first: bool,
    atol: float, rtol: float,
) -> None:
    """Outputs and weights agree on rows where every head has a key; rows where no head has
    one are ``out_proj(0)`` here (NaN in torch); partly dead rows are finite here."""
    out, weights = ours_out
    expected, expected_weights = theirs_out
    out, expected = to_batch_first(out, batch_first), to_batch_first(expected, batch_first)
    live = ~dead.any(dim=1)  # [B, L]
    all_dead = dead.all(dim=1)
    torch.testing.assert_close(out[live], expected[live], atol=atol, rtol=rtol)
    assert torch.isfinite(out).all()
    if all_dead.any():
        zero_attention = torch.zeros_like(out[all_dead]) if out_proj_bias is None else out_proj_bias.expand_as(out[all_dead])
        torch.testing.assert_close(out[all_dead], zero_attention.to(out.dtype), atol=atol, rtol=0)
    if expected_weights is None:
        assert weights is None
        return
    assert weights is not None and weights.shape == expected_weights.shape
    assert torch.isfinite(weights).all()
    if weights.dim() == 4:  # per head [B, H, L, S]: a dead (query, head) row is all zeros
        torch.testing.assert_close(weights[~dead], expected_weights[~dead], atol=atol, rtol=rtol)
        assert (weights[dead] == 0).all()
    else:
        torch.testing.assert_close(weights[live], expected_weights[live], atol=atol, rtol=rtol)
        assert (weights[all_dead] == 0).all()


def run(module, query, key, value, kwargs: dict, grad: bool, need_weights, seed: int = 5):
    """Forward (and, with ``grad``, a backward on a fixed random projection of the live part of
    the outputs through ``torch.autograd.grad``). ``need_weights``: False, "avg" or "per_head".
    Returns ``(outputs, grads)``; grads name inputs and parameters."""
    inputs = {"query": query, "key": key, "value": value}
    leaves: dict[str, Tensor] = {}
    if grad:
        # One leaf per distinct tensor, so self-attention (query is key is value) stays so.
        by_id: dict[int, Tensor] = {}
        for name, tensor in inputs.items():
            if id(tensor) not in by_id:
                by_id[id(tensor)] = leaves[name] = tensor.detach().clone().requires_grad_(True)
        inputs = {name: by_id[id(tensor)] for name, tensor in inputs.items()}
    call = dict(kwargs, need_weights=bool(need_weights), average_attn_weights=need_weights != "per_head")
    out = module(inputs["query"], inputs["key"], inputs["value"], **call)
    if not grad:
        return out, None
    generator = torch.Generator().manual_seed(seed)
    loss = (out[0] * torch.randn(out[0].shape, generator=generator, dtype=out[0].dtype)).nan_to_num(0.0).sum()
    if out[1] is not None:
        loss = loss + (out[1] * torch.randn(out[1].shape, generator=generator, dtype=out[1].dtype)).nan_to_num(0.0).sum()
    params = {name.removeprefix("_orig_mod."): p for name, p in module.named_parameters()}  # compiled: same names
    wrt = {**{f"input:{k}": v for k, v in leaves.items()}, **params}
    grads = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    return out, dict(zip(wrt, grads))


def compare_grads(ours: dict, theirs: dict, atol: float, rtol: float) -> None:
    assert ours.keys() == theirs.keys()
    for name in ours:
        if theirs[name] is None:
            assert ours[name] is None or not ours[name].any(), name
            continue
        torch.testing.assert_close(ours[name], theirs[name], atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
