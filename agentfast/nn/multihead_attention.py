"""``agentfast.nn.MultiheadAttention``: a drop-in for ``torch.nn.MultiheadAttention``.

Same constructor, forward and state_dict keys as torch's class, so existing code can swap
the class and load old weights. Calls whose masks the attention contract can express
(causal, right padding, agent visibility) run through ``agentfast.attention`` and its fast
backends; the rest falls back to a dense path with the same results as torch:

- ``need_weights=True`` (torch's default): the weights are computed explicitly and returned.
  Pass ``need_weights=False`` to get the fast path.
- an arbitrary float ``attn_mask``, a bool ``attn_mask`` that is not causal, a 3-D
  ``attn_mask``, a ``key_padding_mask`` that is not right padding, attention dropout while
  training, ``add_bias_kv`` / ``add_zero_attn``: ``torch.nn.functional.
  scaled_dot_product_attention`` with the merged mask.

Inside ``torch.nn.TransformerEncoderLayer`` in eval mode without gradients, torch takes its
own fused inference kernel with this module's weights (its "fast path"; turn it off with
``torch.backends.mha.set_fastpath_enabled(False)``); training and every other call run here.

Differences from torch: a query that may attend no key at all returns 0 (torch gives NaN);
``is_causal=True`` without ``attn_mask`` applies the causal mask (torch raises); with an
``attn_mask`` given, that mask is applied on every path (torch's SDPA shortcut for
``is_causal`` ignores it, which differs when add_bias_kv/add_zero_attn append keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..attention import attention
from ..attention.mask import dense_mask


class MultiheadAttention(nn.Module):
    """Multi-head attention with torch's interface and agentfast's masked attention kernels.

    Args: those of ``torch.nn.MultiheadAttention`` (embed_dim, num_heads, dropout, bias,
    add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device, dtype), plus
    ``backend``: the default ``agentfast.attention`` backend ("auto", "sdpa", ...).
    """

    __constants__ = ["batch_first"]

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be > 0, got {embed_dim} and {num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        self.backend = backend
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty((3 * embed_dim, embed_dim), **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **factory))
            self.k_proj_weight = nn.Parameter(torch.empty((embed_dim, self.kdim), **factory))
            self.v_proj_weight = nn.Parameter(torch.empty((embed_dim, self.vdim), **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, embed_dim), **factory))
            self.bias_v = nn.Parameter(torch.empty((1, 1, embed_dim), **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's initialisation: Xavier-uniform projections, zero biases."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            nn.init.xavier_normal_(self.bias_v)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        seq_lens: Tensor | None = None,
        agent_ids: Tensor | None = None,
        agent_visibility: Tensor | None = None,
        backend: str | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """torch's ``MultiheadAttention.forward`` plus the agentfast mask arguments.

        Args:
            query: ``[L, B, E]`` (``[B, L, E]`` with batch_first, ``[L, E]`` unbatched).
            key, value: ``[S, B, kdim/vdim]`` likewise.
            key_padding_mask: ``[B, S]``, bool (True = ignore) or float (added).
            need_weights: also return attention weights (dense path; False is faster).
            attn_mask: ``[L, S]`` or ``[B*num_heads, L, S]``, bool (True = not allowed) or
                float (added). A causal mask is recognised and runs on the fast path.
            average_attn_weights: average the returned weights over heads.
            is_causal: apply a causal mask when ``attn_mask`` is None (queries are the last
                L of the S key positions); when ``attn_mask`` is given it is used as is.
            seq_lens: int ``[B]``, keys at ``j >= seq_lens[b]`` are padding (no mask tensor).
            agent_ids: int ``[B, S]``, the agent of each key position; the query at i is the
                key position ``S - L + i``. agent_visibility: bool ``[A, A]`` / ``[B, A, A]``.
            backend: the ``agentfast.attention`` backend for this call (default: the module's).

        Returns:
            ``(attn_output, attn_weights)``: output shaped like ``query`` with embed_dim
            features; weights ``[B, L, S]`` (``[B, H, L, S]`` without averaging) or None.
        """
        unbatched = query.dim() == 2
        query, key, value, key_padding_mask = self._to_batch_first(query, key, value, key_padding_mask, unbatched)
        batch, num_queries, num_keys = query.shape[0], query.shape[1], key.shape[1]
        self._check_attn_mask(attn_mask, batch, num_queries, num_keys)
        q, k, v = self._project(query, key, value)
        causal = None  # None: the masks need the dense path
        if self._fast_path_possible(need_weights, num_queries, num_keys):
            causal, seq_lens = self._fast_masks(
                attn_mask, is_causal, key_padding_mask, seq_lens, num_queries, num_keys, batch, query.device
            )
        weights = None
        if causal is not None:
            out = attention(
                q, k, v, causal=causal, seq_lens=seq_lens, agent_ids=agent_ids,
                agent_visibility=agent_visibility, backend=backend or self.backend,
            )
        else:
            out, weights = self._dense_attention(
                q, k, v, attn_mask, is_causal, key_padding_mask, seq_lens, agent_ids, agent_visibility,
                need_weights, average_attn_weights,
            )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, num_queries, self.embed_dim))
        if unbatched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def merge_masks(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, query: Tensor
    ) -> tuple[Tensor | None, int | None]:
        """torch's ``MultiheadAttention.merge_masks``, which the inference fast path of
        ``torch.nn.TransformerEncoderLayer`` calls before it runs torch's own fused kernel on
        this module's weights."""
        return nn.MultiheadAttention.merge_masks(self, attn_mask, key_padding_mask, query)

    # -- inputs ---------------------------------------------------------------------------

    def _check_attn_mask(self, attn_mask: Tensor | None, batch: int, num_queries: int, num_keys: int) -> None:
        """torch's shapes: ``[L, S]`` or ``[B * num_heads, L, S]``."""
        if attn_mask is None:
            return
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attn_mask must be a tensor, got {type(attn_mask).__name__}")
        shapes = {2: (num_queries, num_keys), 3: (batch * self.num_heads, num_queries, num_keys)}
        if attn_mask.dim() not in shapes:
            raise ValueError(f"attn_mask must be 2-D [L, S] or 3-D [B * num_heads, L, S], got {attn_mask.dim()}-D")
        if tuple(attn_mask.shape) != shapes[attn_mask.dim()]:
            raise ValueError(
                f"the {attn_mask.dim()}-D attn_mask has shape {tuple(attn_mask.shape)}, "
                f"but should be {shapes[attn_mask.dim()]}"
            )

    def _to_batch_first(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None, unbatched: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Views of the inputs as ``[B, N, E]`` (no copies) after checking their shapes."""
        wanted = 2 if unbatched else 3
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if not isinstance(tensor, Tensor) or tensor.dim() != wanted:
                got = list(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise ValueError(f"{name} must be a {wanted}-D tensor like query, got {got}")
        # Self-attention keeps one object for query, key and value, so _project can use the
        # fused qkv projection.
        same = query is key and key is value
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if same:
            key = value = query
        for name, tensor, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if tensor.shape[-1] != dim:
                raise ValueError(f"{name} has {tensor.shape[-1]} features, expected {dim}")
        if not (query.shape[0] == key.shape[0] == value.shape[0]):
            raise ValueError(f"query, key, value batch sizes differ: {query.shape[0]}, {key.shape[0]}, {value.shape[0]}")
        if key.shape[1] != value.shape[1]:
            raise ValueError(f"key has {key.shape[1]} positions but value has {value.shape[1]}")
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (key.shape[0], key.shape[1]):
            raise ValueError(
                f"key_padding_mask must be [B={key.shape[0]}, S={key.shape[1]}], got {list(key_padding_mask.shape)}"
            )
        return query, key, value, key_padding_mask

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as ``[B, H, N, D]`` strided views of the projections."""
        embed = self.embed_dim
        bias = self.in_proj_bias
        if self._qkv_same_embed_dim and query is key and key is value:
            qkv = F.linear(query, self.in_proj_weight, bias)
            qkv = qkv.reshape(query.shape[0], query.shape[1], 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v
        if self._qkv_same_embed_dim:
            weights = self.in_proj_weight.split(embed)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = bias.split(embed) if bias is not None else (None, None, None)
        return tuple(
            self._heads(F.linear(x, w, b)) for x, w, b in zip((query, key, value), weights, biases)
        )  # type: ignore[return-value]

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    # -- fast path: masks the contract expresses --------------------------------------------

    def _fast_path_possible(self, need_weights: bool, num_queries: int, num_keys: int) -> bool:
        return not (
            need_weights
            or self.bias_k is not None
            or self.add_zero_attn
            or (self.training and self.dropout > 0.0)
            or self.head_dim > 256
            or num_queries > num_keys
        )

    def _fast_masks(
        self,
        attn_mask: Tensor | None,
        is_causal: bool,
        key_padding_mask: Tensor | None,
        seq_lens: Tensor | None,
        num_queries: int,
        num_keys: int,
        batch: int,
        device: torch.device,
    ) -> tuple[bool | None, Tensor | None]:
        """``(causal, seq_lens)`` for ``agentfast.attention``, or ``(None, seq_lens)`` when
        the masks need the dense path."""
        causal = bool(is_causal)
        if attn_mask is not None:
            kind = _attn_mask_kind(attn_mask, num_queries, num_keys)
            if kind is None:
                return None, seq_lens
            causal = kind == "causal"
        if key_padding_mask is not None:
            lengths = _right_padding_lengths(key_padding_mask)
            if lengths is None:
                return None, seq_lens
            seq_lens = lengths if seq_lens is None else torch.minimum(seq_lens.to(device).long(), lengths)
        return causal, seq_lens

    # -- dense path: anything torch accepts, with weights -----------------------------------

    def _dense_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None,
        is_causal: bool,
        key_padding_mask: Tensor | None,
        seq_lens: Tensor | None,
        agent_ids: Tensor | None,
        agent_visibility: Tensor | None,
        need_weights: bool,
        average_attn_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        batch, heads, num_queries, _ = q.shape
        num_keys = k.shape[2]
        bias = torch.zeros(batch, 1, num_queries, num_keys, dtype=torch.float32, device=q.device)
        if attn_mask is not None:
            bias = bias + _additive(attn_mask, torch.float32).reshape(
                (batch, heads, num_queries, num_keys) if attn_mask.dim() == 3 else (1, 1, num_queries, num_keys)
            )
        elif is_causal:
            bias = bias.masked_fill(~_causal_allowed(num_queries, num_keys, q.device), float("-inf"))
        if key_padding_mask is not None:
            bias = bias + _additive(key_padding_mask, torch.float32)[:, None, None, :]
        if seq_lens is not None or agent_visibility is not None:
            bias = bias.masked_fill(~self._contract_mask(q, num_keys, seq_lens, agent_ids, agent_visibility), float("-inf"))
        k, v, bias = self._extra_keys(k, v, bias)
        has_key = (bias != float("-inf")).any(dim=-1, keepdim=True)
        # A row with no allowed key would be NaN; give it a zero bias row and zero it afterwards.
        bias = torch.where(has_key, bias, torch.zeros_like(bias))
        dropout = self.dropout if self.training else 0.0
        if not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
            return out * has_key.to(out.dtype), None
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.head_dim**-0.5 + bias
        probs = torch.softmax(scores, dim=-1) * has_key
        if dropout > 0.0:
            probs = F.dropout(probs, p=dropout)
        out = torch.matmul(probs, v.float()).to(q.dtype)
        weights = probs.to(q.dtype)
        return out, (weights.mean(dim=1) if average_attn_weights else weights)

    def _contract_mask(
        self,
        q: Tensor,
        num_keys: int,
        seq_lens: Tensor | None,
        agent_ids: Tensor | None,
        agent_visibility: Tensor | None,
    ) -> Tensor:
        """The seq_lens/agent part of the contract's rule as bool ``[B, 1, L, S]``."""
        batch, num_queries = q.shape[0], q.shape[2]
        visibility = None
        if agent_visibility is not None:
            if agent_ids is None:
                raise ValueError("agent_visibility was given without agent_ids; pass agent_ids [B, S]")
            visibility = agent_visibility.to(q.device)
            if visibility.dim() == 2:
                visibility = visibility.unsqueeze(0).expand(batch, -1, -1)
            agent_ids = agent_ids.to(q.device)
        return dense_mask(
            batch, num_queries, num_keys, q.device, causal=False,
            seq_lens=None if seq_lens is None else seq_lens.to(q.device),
            agent_ids=agent_ids, visibility=visibility,
        )

    def _extra_keys(self, k: Tensor, v: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append torch's learned bias key/value and zero key/value (always attendable)."""
        batch, heads = k.shape[:2]
        if self.bias_k is not None:
            k = torch.cat([k, self._heads(self.bias_k.expand(batch, 1, -1))], dim=2)
            v = torch.cat([v, self._heads(self.bias_v.expand(batch, 1, -1))], dim=2)
            bias = F.pad(bias, (0, 1))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, heads, 1, self.head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(batch, heads, 1, self.head_dim)], dim=2)
            bias = F.pad(bias, (0, 1))
        return k, v, bias.expand(batch, heads, -1, -1) if bias.shape[1] == 1 else bias


# ----------------------------------------------------------------------------- mask helpers


def _causal_allowed(num_queries: int, num_keys: int, device: torch.device) -> Tensor:
    """bool ``[L, S]``: query i (key position S - L + i) may see keys up to itself."""
    keys = torch.arange(num_keys, device=device)
    return keys[None, :] <= (keys[num_keys - num_queries :])[:, None]


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """torch's mask convention as an additive float mask: bool True = -inf, float as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"attention masks must be bool or float, got {mask.dtype}")
    return mask.to(dtype)


def _attn_mask_kind(attn_mask: Tensor, num_queries: int, num_keys: int) -> str | None:
    """"causal" or "none" when ``attn_mask`` ``[L, S]`` is the causal mask or masks nothing;
    None when only the dense path can apply it."""
    if attn_mask.dim() != 2 or tuple(attn_mask.shape) != (num_queries, num_keys):
        return None
    blocked = _blocked(attn_mask)
    if blocked is None:
        return None
    if not bool(blocked.any()):
        return "none"
    if torch.equal(blocked, ~_causal_allowed(num_queries, num_keys, attn_mask.device)):
        return "causal"
    return None


def _blocked(mask: Tensor) -> Tensor | None:
    """bool mask of blocked entries, or None when a float mask holds values other than 0/-inf."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise TypeError(f"attention masks must be bool or float, got {mask.dtype}")
    blocked = mask == float("-inf")
    if bool(((mask != 0) & ~blocked).any()):
        return None
    return blocked


def _right_padding_lengths(key_padding_mask: Tensor) -> Tensor | None:
    """Valid lengths ``[B]`` when ``key_padding_mask`` pads only at the end of each row."""
    blocked = _blocked(key_padding_mask)
    if blocked is None:
        return None
    lengths = (~blocked).sum(dim=1)
    positions = torch.arange(blocked.shape[1], device=blocked.device)
    if not torch.equal(blocked, positions[None, :] >= lengths[:, None]):
        return None
    return lengths
