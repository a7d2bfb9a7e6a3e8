"""``agentfast.attention``: validate a call, then hand it to a backend.

The contract (docs/attention-contract.md): q ``[B, H, Nq, D]``, k/v ``[B, Hkv, Nk, D]`` with ``Nq <= Nk``
and H a multiple of Hkv (grouped-query attention: query head h reads kv head
``h // (H // Hkv)``); queries are the last Nq key positions. Query ``i`` (position ``p = Nk - Nq + i``) attends key
``j`` iff ``(not causal or j <= p)``, ``j < seq_lens[b]`` and, with agents,
``agent_visibility[b, agent_ids[b, p], agent_ids[b, j]]``. Rows with no allowed key are 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..visibility import check_visibility_shape, visibility_to_bitmask
from .backends import AttentionBackend, AttentionCall, backend_names, get_backend
from .dispatch_table import auto_candidates

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INT_DTYPES = (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8)


class AttentionInputError(ValueError):
    """An argument of ``agentfast.attention`` breaks the contract; the message says which."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot serve this call; the message says why."""


def _fail(message: str) -> None:
    raise AttentionInputError(message)


def _check_tensors(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            _fail(f"{name} must be 4-D [B, H, N, D], got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            _fail(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        _fail(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        _fail(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        _fail(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, heads, num_queries, head_dim = q.shape
    if (k.shape[0], k.shape[3]) != (batch, head_dim):
        _fail(
            f"k/v shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} "
            "in batch or head dim"
        )
    kv_heads = k.shape[1]
    if kv_heads == 0 or heads % kv_heads != 0:
        _fail(
            f"q has {heads} heads and k/v {kv_heads}: the query heads must be a multiple of "
            "the key/value heads (grouped-query attention)"
        )
    if num_queries > k.shape[2]:
        _fail(f"q has {num_queries} positions but k only {k.shape[2]}; Nq must be <= Nk")
    if head_dim > 256:
        _fail(f"head dim must be <= 256, got {head_dim}")
    if k.shape[2] == 0 or head_dim == 0:
        _fail(f"k must have at least one position and a non-zero head dim, got {tuple(k.shape)}")


def _check_index_tensor(name: str, t: Tensor, shape: tuple[int, ...], device: torch.device) -> None:
    if not isinstance(t, Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INT_DTYPES:
        _fail(f"{name} must be an integer tensor, got {t.dtype}")
    if tuple(t.shape) != shape:
        _fail(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != device:
        _fail(f"{name} is on {t.device} but q is on {device}")


def _check_range(name: str, t: Tensor, low: int, high: int) -> None:
    """Check low <= t <= high without a host sync on accelerators."""
    if torch.compiler.is_compiling():
        return
    if t.device.type == "cpu":
        bad = (t < low) | (t > high)
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            _fail(f"{name}{list(index)} = {int(t[index])} is outside [{low}, {high}]")
    else:
        torch._assert_async(((t >= low) & (t <= high)).all(), f"{name} outside [{low}, {high}]")


def _expand_visibility(visibility: Tensor, batch: int, device: torch.device) -> Tensor:
    if not isinstance(visibility, Tensor):
        _fail(f"agent_visibility must be a bool torch.Tensor, got {type(visibility).__name__}")
    if visibility.dtype != torch.bool:
        _fail(f"agent_visibility must be bool, got {visibility.dtype}")
    if visibility.device != device:
        _fail(f"agent_visibility is on {visibility.device} but q is on {device}")
    check_visibility_shape(visibility, batch, name="agent_visibility", error=AttentionInputError)
    return visibility.expand(batch, -1, -1) if visibility.dim() == 2 else visibility


def make_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    agent_visibility: Tensor | None = None,
    scale: float | None = None,
) -> AttentionCall:
    """Validate the arguments of ``attention`` and bundle them as an ``AttentionCall``."""
    _check_tensors(q, k, v)
    batch, num_keys, device = q.shape[0], k.shape[2], q.device
    if seq_lens is not None:
        _check_index_tensor("seq_lens", seq_lens, (batch,), device)
        _check_range("seq_lens", seq_lens, 0, num_keys)
    visibility = bitmask = None
    if agent_visibility is not None:
        if agent_ids is None:
            _fail("agent_visibility was given without agent_ids; pass agent_ids [B, Nk]")
        visibility = _expand_visibility(agent_visibility, batch, device)
        _check_index_tensor("agent_ids", agent_ids, (batch, num_keys), device)
        _check_range("agent_ids", agent_ids, 0, visibility.shape[-1] - 1)
        bitmask = visibility_to_bitmask(visibility)
    elif agent_ids is not None:
        _check_index_tensor("agent_ids", agent_ids, (batch, num_keys), device)
        agent_ids = None  # without a visibility matrix every agent sees every agent
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return AttentionCall(
        q=q, k=k, v=v, causal=bool(causal), seq_lens=seq_lens, agent_ids=agent_ids,
        visibility=visibility, agent_bitmask=bitmask, scale=float(scale),
    )


def select_backend(call: AttentionCall, backend: str = "auto") -> AttentionBackend:
    """The backend that will serve ``call``: the named one (or an error saying why it
    cannot), or for ``auto`` the first able candidate of the benchmark-derived order."""
    if backend != "auto":
        chosen = get_backend(backend)
        reason = chosen.why_not(call)
        if reason is not None:
            raise BackendUnavailableError(f"attention backend {backend!r} cannot serve this call: {reason}")
        return chosen
    for name in auto_candidates(call):
        candidate = get_backend(name)
        if candidate.why_not(call) is None:
            return candidate
    return get_backend("reference")


def explain(call: AttentionCall) -> dict[str, str | None]:
    """For each backend, ``None`` if it can serve ``call``, else why not."""
    return {name: get_backend(name).why_not(call) for name in backend_names()}


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    agent_visibility: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """The implementation of ``agentfast.attention.attention`` (documented there): validate
    the call, then run it on the chosen backend."""
    call = make_call(
        q, k, v, causal=causal, seq_lens=seq_lens, agent_ids=agent_ids,
        agent_visibility=agent_visibility, scale=scale,
    )
    return select_backend(call, backend).forward(call)


def attention_with_weights(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    seq_lens: Tensor | None = None,
    agent_ids: Tensor | None = None,
    agent_visibility: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """``attention`` (same arguments, no ``backend``) that also returns its weights.

    Fused kernels never materialise the attention probabilities, so this always runs the
    reference backend: ``(output [B, H, Nq, D] in q's dtype, weights [B, H, Nq, Nk]
    float32)``, the weights exactly 0 at keys the rule forbids. It holds an Nq x Nk matrix
    per head; use it to look at a model, not to train one.
    """
    call = make_call(
        q, k, v, causal=causal, seq_lens=seq_lens, agent_ids=agent_ids,
        agent_visibility=agent_visibility, scale=scale,
    )
    return get_backend("reference").forward_with_weights(call)
