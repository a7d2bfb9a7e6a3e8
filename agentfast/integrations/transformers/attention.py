"""The attention side of the integration: a transformers attention function over
``agentfast.attention``.

transformers calls ``fn(module, query, key, value, attention_mask, dropout=..., scaling=...,
**kwargs)`` with query ``[B, H, Nq, D]`` and key/value ``[B, Hkv, Nk, D]`` (after the KV cache
update) and expects ``([B, Nq, H, D], weights or None)``. The mask is the ``AgentfastMask``
of ``masks.py``; the forward kwargs of the model arrive in ``kwargs``, which is how
``agent_ids`` and ``agent_visibility`` reach the kernel.

Mapping onto the contract (queries are the last Nq of the keys handed to the kernel):
- keys past the last query (the empty tail of a static cache) are sliced off (a view);
- causal mask -> ``causal=True``; bidirectional -> ``causal=False``;
- a 2-D padding mask whose valid tokens form a prefix of every row (right padding) ->
  ``seq_lens``; any other padding (left padding, holes) -> an extra agent class that no
  agent sees, so padded keys are masked exactly and padded queries return 0;
- packed sequences (position ids restarting) -> one agent class per sequence that sees only
  itself; with causality that is exactly "attend to earlier tokens of your own sequence";
- user agents (``agent_ids`` [B, L] over the token positions, ``agent_visibility`` [A, A] or
  [B, A, A]) combine with both: class (sequence s, agent a) sees (s', a') iff s == s' and
  a sees a', which is the block-diagonal visibility below; at most 64 classes;
- a sliding window no pair of tokens in the call can exceed is dropped.
Everything else (a window that bites, soft-capping, attention sinks, dropout while
training, head masks, attention weights requested, position biases, 4-D masks passed by
the caller, more than 64 classes, a mask function it does not recognise) falls back to
transformers' sdpa (or the model's eager attention where sdpa cannot serve) with the exact
dense mask, after a one-time ``AttentionFallbackWarning`` naming why.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ...attention import attention as _agentfast_attention
from ...attention.mask import dense_mask
from ...visibility import MAX_AGENTS, check_visibility_shape, visibility_between
from .masks import AgentfastMask


class AttentionFallbackWarning(UserWarning):
    """A call left agentfast's kernels for transformers' sdpa or eager attention; the
    message says why. Issued once per reason."""


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, AttentionFallbackWarning, stacklevel=3)


@dataclass(frozen=True)
class _Fallback:
    key: str  # the reason's name (one warning per name)
    reason: str
    eager: bool = False  # sdpa cannot serve it either: use the model's eager attention


@dataclass(frozen=True)
class _Plan:
    """One ``agentfast.attention`` call, prepared once per forward and shared by layers."""

    num_keys: int
    causal: bool
    seq_lens: Tensor | None
    agent_ids: Tensor | None
    agent_visibility: Tensor | None


def _feature_fallback(module: torch.nn.Module, dropout: float, kwargs: dict) -> _Fallback | None:
    """Features of the call the contract has no words for."""
    if kwargs.get("softcap") is not None:
        return _Fallback("softcap", f"attention logit soft-capping (softcap={kwargs['softcap']})", eager=True)
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        return _Fallback("sinks", "attention sinks", eager=True)
    if kwargs.get("output_attentions"):
        return _Fallback("weights", "output_attentions=True asks for the attention weights", eager=True)
    if kwargs.get("head_mask") is not None:
        return _Fallback("head_mask", "a head_mask", eager=True)
    if kwargs.get("position_bias") is not None:
        return _Fallback("position_bias", "an additive position bias")
    if dropout and module.training:
        return _Fallback("dropout", f"attention dropout {dropout} while training (set the config's attention "
                                    "dropout to 0 to stay on agentfast)")
    return None


def _columns(rows: Tensor, start: int, count: int, fill: int | bool) -> Tensor:
    """Columns ``start .. start+count-1`` of a [B, L] tensor, padded with ``fill`` past L."""
    missing = start + count - rows.shape[1]
    if missing > 0:
        rows = F.pad(rows, (0, missing), value=fill)
    return rows[:, start:start + count]


def _agent_arguments(kwargs: dict, batch: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
    agent_ids, visibility = kwargs.get("agent_ids"), kwargs.get("agent_visibility")
    if visibility is None:
        return None  # without a visibility matrix every agent sees every agent
    if agent_ids is None:
        raise ValueError("agent_visibility was passed to the model without agent_ids; pass agent_ids "
                         "[batch, sequence] with the agent of every token")
    if not isinstance(agent_ids, Tensor) or agent_ids.dim() != 2 or agent_ids.shape[0] != batch:
        raise ValueError(f"agent_ids must be an integer tensor [batch={batch}, sequence], got "
                         f"{tuple(agent_ids.shape) if isinstance(agent_ids, Tensor) else type(agent_ids).__name__}")
    if not isinstance(visibility, Tensor) or visibility.dtype != torch.bool:
        raise ValueError("agent_visibility must be a bool tensor [A, A] or [batch, A, A] (row = the attending agent)")
    check_visibility_shape(visibility, batch, name="agent_visibility")
    if visibility.dim() == 2:
        visibility = visibility.expand(batch, -1, -1)
    return agent_ids.to(device), visibility.to(device)


def _key_window(mask: AgentfastMask | None, num_queries: int, num_keys: int) -> tuple[int, int] | _Fallback:
    """(position of the first key, number of keys the call uses)."""
    if mask is None:
        return 0, num_keys
    if mask.q_length != num_queries:
        return _Fallback("layout", f"the mask was built for {mask.q_length} queries but the layer has {num_queries}")
    used = mask.q_offset + num_queries - mask.kv_offset  # keys up to the last query
    if not num_queries <= used <= num_keys:
        return _Fallback("layout", f"the last query (position {mask.q_offset + num_queries - 1}) is not among the "
                                   f"{num_keys} keys starting at position {mask.kv_offset}")
    return mask.kv_offset, used


def _padding(mask: AgentfastMask | None, first_key: int, used: int) -> tuple[Tensor | None, Tensor | None]:
    """(seq_lens for right padding, valid [B, used] for any other padding)."""
    if mask is None or mask.padding is None:
        return None, None
    valid = _columns(mask.padding, first_key, used, False)
    counts = valid.sum(dim=1)
    if bool((counts == used).all()):
        return None, None
    prefix = torch.arange(used, device=valid.device)[None, :] < counts[:, None]
    if torch.equal(valid, prefix):
        return counts, None
    return None, valid


def _compose_classes(
    segments: Tensor | None, valid: Tensor | None, agents: tuple[Tensor, Tensor] | None, batch: int,
    num_keys: int, device: torch.device,
) -> tuple[Tensor, Tensor] | _Fallback:
    """Agent ids and a [B, C, C] visibility for classes (sequence, agent) plus a padding
    class that nobody sees and that sees nothing."""
    if agents is not None:
        agent_ids, visibility = agents[0].long(), agents[1]
    else:
        agent_ids = torch.zeros(batch, num_keys, dtype=torch.long, device=device)
        visibility = torch.ones(batch, 1, 1, dtype=torch.bool, device=device)
    num_agents = visibility.shape[-1]
    num_segments = int(segments.max()) + 1 if segments is not None else 1
    classes = num_segments * num_agents + (valid is not None)
    if classes > MAX_AGENTS:
        return _Fallback("classes", f"{num_segments} packed sequences x {num_agents} agents"
                                    f"{' + padding' if valid is not None else ''} need {classes} agent classes; "
                                    f"the kernels hold at most {MAX_AGENTS}")
    ids = agent_ids if segments is None else segments.long() * num_agents + agent_ids
    same_segment = torch.eye(num_segments, dtype=torch.bool, device=device)
    blocks = same_segment[None, :, None, :, None] & visibility[:, None, :, None, :]
    blocks = blocks.reshape(batch, num_segments * num_agents, num_segments * num_agents)
    if valid is not None:
        ids = torch.where(valid, ids, num_segments * num_agents)
        blocks = F.pad(blocks, (0, 1, 0, 1), value=False)
    return ids, blocks


def _plan(
    mask: AgentfastMask | None, num_queries: int, num_keys: int, agents: tuple[Tensor, Tensor] | None,
    default_causal: bool, batch: int, device: torch.device,
) -> _Plan | _Fallback:
    window = _key_window(mask, num_queries, num_keys)
    if isinstance(window, _Fallback):
        return window
    first_key, used = window
    rule = mask.rule if mask is not None else None
    if mask is not None and rule is None:
        return _Fallback("mask", "transformers composed a mask function the contract cannot express "
                                 "(custom overlay, chunked or blockwise attention, ...)")
    causal = rule.causal if rule is not None else default_causal
    if used < num_keys and not causal:
        return _Fallback("layout", "non-causal attention over a partly filled cache")
    segments = None
    if rule is not None and rule.segments is not None:
        if not (num_queries == used == rule.segments.shape[1]):
            return _Fallback("layout", "packed sequences with a cache")
        segments = rule.segments.to(device)
    if rule is not None and rule.window is not None:
        # The widest distance between a query and a key it may see in this call.
        if segments is not None:
            per_row = segments.long() + torch.arange(batch, device=device)[:, None] * (used + 1)  # no run spans rows
            span = int(torch.unique_consecutive(per_row.flatten(), return_counts=True)[1].max()) - 1
        else:
            span = used - 1
        if not causal or rule.window <= span:
            return _Fallback("window", f"a sliding window of {rule.window} tokens over {span + 1} positions")
    if agents is not None:
        agent_ids, visibility = agents
        if agent_ids.shape[1] < first_key + used:
            raise ValueError(
                f"agent_ids covers {agent_ids.shape[1]} positions but attention reaches position "
                f"{first_key + used - 1}; pass the agent of every token, cached ones included")
        agents = (agent_ids[:, first_key:first_key + used], visibility)
    seq_lens, valid = _padding(mask, first_key, used)
    if segments is None and valid is None:
        ids, vis = agents if agents is not None else (None, None)
    else:
        composed = _compose_classes(segments, valid, agents, batch, used, device)
        if isinstance(composed, _Fallback):
            return composed
        ids, vis = composed
    return _Plan(used, causal, seq_lens, ids, vis)


def _dense_mask(
    attention_mask: Any, mask: AgentfastMask | None, query: Tensor, key: Tensor,
    agents: tuple[Tensor, Tensor] | None, causal: bool,
) -> Tensor | None:
    """The exact mask for the fallback: transformers' own, with the agent rule on top."""
    batch, num_queries, num_keys = query.shape[0], query.shape[2], key.shape[2]
    if isinstance(attention_mask, Tensor):
        dense = attention_mask
    elif mask is not None:
        dense = mask.dense()
    else:
        dense = None
    first_query = mask.q_offset if mask is not None else num_keys - num_queries
    first_key = mask.kv_offset if mask is not None else 0
    if dense is None and (agents is not None or (causal and num_queries > 1)):
        # No mask from transformers: the queries are the last of the keys, as the contract has them.
        dense = dense_mask(batch, num_queries, num_keys, query.device, causal=causal)
    if agents is not None:
        agent_ids, visibility = agents
        if agent_ids.shape[1] < first_query + num_queries:
            raise ValueError(f"agent_ids covers {agent_ids.shape[1]} positions but the queries reach position "
                             f"{first_query + num_queries - 1}; pass the agent of every token, cached ones included")
        query_agents = _columns(agent_ids, first_query, num_queries, 0)
        key_agents = _columns(agent_ids, first_key, num_keys, 0)  # keys past the ids are cache slack
        seen = visibility_between(visibility, query_agents, key_agents).unsqueeze(1)
        if dense.dtype == torch.bool:
            dense = dense & seen
        else:
            dense = dense.masked_fill(~seen, torch.finfo(dense.dtype).min)
    return dense


def _eager_function(module: torch.nn.Module) -> Callable:
    function = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if function is None:
        raise NotImplementedError(
            f"{type(module).__name__} needs eager attention for this call and its module defines no "
            "eager_attention_forward; load the model with attn_implementation='eager'")
    return function


def _fallback(
    fallback: _Fallback, module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
    attention_mask: Any, mask: AgentfastMask | None, agents: tuple[Tensor, Tensor] | None, causal: bool,
    dropout: float, scaling: float | None, kwargs: dict,
) -> tuple[Tensor, Tensor | None]:
    target = "eager attention" if fallback.eager else "sdpa"
    _warn_once(fallback.key, f"agentfast attention falls back to transformers' {target}: {fallback.reason}")
    dense = _dense_mask(attention_mask, mask, query, key, agents, causal)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("agent_ids", "agent_visibility", "is_causal")}
    if fallback.eager:
        if dense is not None and dense.dtype == torch.bool:
            zero = torch.zeros((), dtype=query.dtype, device=query.device)
            dense = torch.where(dense, zero, torch.finfo(query.dtype).min)
        return _eager_function(module)(module, query, key, value, dense, dropout=dropout, scaling=scaling, **kwargs)
    return sdpa_attention_forward(module, query, key, value, dense, dropout=dropout, scaling=scaling,
                                  is_causal=causal, **kwargs)


def _shared_plan(mask: AgentfastMask | None, kwargs: dict, num_queries: int, num_keys: int,
                 compute: Callable[[], _Plan | _Fallback]) -> _Plan | _Fallback:
    """Plan once per forward: every layer using the same mask and agents shares it."""
    if mask is None:
        return compute()
    agent_ids, visibility = kwargs.get("agent_ids"), kwargs.get("agent_visibility")
    key = (num_queries, num_keys, id(agent_ids), id(visibility))
    if key not in mask.plans:
        # The tensors stay referenced beside the plan so their ids cannot be reused meanwhile.
        mask.plans[key] = (compute(), agent_ids, visibility)
    return mask.plans[key][0]


def make_attention_function(backend: str = "auto") -> Callable:
    """A transformers attention function that runs ``agentfast.attention(..., backend=backend)``."""

    def agentfast_attention_forward(
        module: torch.nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Any,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        batch, num_queries, num_keys = query.shape[0], query.shape[2], key.shape[2]
        mask = attention_mask if isinstance(attention_mask, AgentfastMask) else None
        if attention_mask is not None and mask is None and not isinstance(attention_mask, Tensor):
            raise TypeError(f"agentfast attention got an attention mask of type {type(attention_mask).__name__}; "
                            "expected the mask transformers builds for attn_implementation='agentfast' or a 4-D tensor")
        agents = _agent_arguments(kwargs, batch, query.device)
        default_causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
        causal = mask.rule.causal if mask is not None and mask.rule is not None else default_causal

        plan: _Plan | _Fallback | None = _feature_fallback(module, dropout, kwargs)
        if plan is None and isinstance(attention_mask, Tensor):
            plan = _Fallback("4d", f"a {attention_mask.dim()}-D attention mask tensor was passed to the model")
        if plan is None:
            plan = _shared_plan(mask, kwargs, num_queries, num_keys, lambda: _plan(
                mask, num_queries, num_keys, agents, default_causal, batch, query.device))
        if isinstance(plan, _Fallback):
            return _fallback(plan, module, query, key, value, attention_mask, mask, agents, causal,
                             dropout, scaling, kwargs)
        used = plan.num_keys
        if used < num_keys:
            key, value = key[:, :, :used], value[:, :, :used]
        out = _agentfast_attention(
            query, key, value, causal=plan.causal, seq_lens=plan.seq_lens, agent_ids=plan.agent_ids,
            agent_visibility=plan.agent_visibility, scale=scaling, backend=backend,
        )
        return out.transpose(1, 2).contiguous(), None

    agentfast_attention_forward.__qualname__ = f"agentfast_attention_forward[{backend}]"
    return agentfast_attention_forward
