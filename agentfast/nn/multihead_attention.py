"""``agentfast.nn.MultiheadAttention``: a drop-in for ``torch.nn.MultiheadAttention``.

The class subclasses torch's, so it has the same constructor, forward, attributes,
``state_dict`` keys and initialisation (same seed, same weights), ``isinstance`` checks
recognise it (torch's own ``TransformerEncoderLayer`` fast-path checks included), and it can
replace ``torch.nn.MultiheadAttention`` inside torch's transformer modules. Only ``forward``
differs: calls whose masks the attention contract can express run through
``agentfast.attention`` and its fast kernels; everything else runs a dense path with torch's
results (see the class docstring for when, and for the deliberate differences).

Written so that ``torch.jit.script`` compiles the module (Python 3.8-style ``typing``
annotations, no keyword-only forward arguments): TorchScript runs the dense path, eager mode
and ``torch.compile`` also the fast one.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules import activation as _torch_activation

from ..attention import attention, backend_names
from ..attention.mask import dense_mask
from ..visibility import MAX_AGENTS

# torch's class as defined, bound once: code that patches ``torch.nn.MultiheadAttention`` (or
# ``torch.nn.modules.transformer.MultiheadAttention``) with this class never reaches here.
_TorchMultiheadAttention = _torch_activation.MultiheadAttention


class MultiheadAttentionError(ValueError):
    """A bad argument to ``agentfast.nn.MultiheadAttention``; the message says which.

    Every instance raised is also of the exception type torch's class raises for the same
    input (``_AssertionInputError`` / ``_RuntimeInputError``), so handlers written for torch
    keep working.
    """


class _AssertionInputError(MultiheadAttentionError, AssertionError):
    """Where ``torch.nn.MultiheadAttention`` raises AssertionError."""


class _RuntimeInputError(MultiheadAttentionError, RuntimeError):
    """Where ``torch.nn.MultiheadAttention`` raises RuntimeError."""


class MultiheadAttention(_TorchMultiheadAttention):
    """``torch.nn.MultiheadAttention`` on agentfast's masked attention kernels.

    Args: those of ``torch.nn.MultiheadAttention`` (embed_dim, num_heads, dropout, bias,
    add_bias_kv, add_zero_attn, kdim, vdim, batch_first, device, dtype), plus the keyword
    ``backend``: the default ``agentfast.attention`` backend ("auto", "cpp", "sdpa", ...).

    Which path a call takes:

    - fast (``agentfast.attention``): ``need_weights=False`` with masks the contract expresses:
      none, causal (``is_causal=True``, or an ``attn_mask`` [L, S] that is causal or masks
      nothing), any bool ``key_padding_mask`` (and float ones of 0 / -inf), plus the agentfast
      extras ``seq_lens``, ``agent_ids``, ``agent_visibility``. Right padding becomes
      ``seq_lens``, other padding becomes agents that nobody sees, so the kernels skip the
      padded tiles either way.
    - dense (plain torch ops, torch's results): ``need_weights=True`` (torch's default; pass
      ``need_weights=False`` for speed), other ``attn_mask`` values, 3-D ``attn_mask``,
      float masks with values other than 0 / -inf, attention dropout while training,
      ``add_bias_kv`` / ``add_zero_attn``, ``L > S``, empty inputs, and every call under
      TorchScript.

    Eager mode looks at mask values to choose (cheap next to attention, but a host sync on
    GPUs). Under ``torch.compile`` (and tracing) it never does, so graphs have no breaks and
    no syncs: there ``is_causal=True`` and bool ``key_padding_mask`` take the fast path, an
    ``attn_mask`` without ``is_causal`` and float padding masks the dense one.

    Nested-tensor inputs run torch's own code (its fused inference kernel in eval mode without
    gradients, the only place torch's class accepts them), with its results and its errors.
    Inside ``torch.nn.TransformerEncoderLayer`` in eval mode without gradients, torch runs its
    fused inference kernel on this module's weights; training and every other call run here.

    Deliberate differences from torch:

    - A query that may attend no key at all (fully masked row) returns 0, with zero gradient;
      torch returns NaN (always with weights; its SDPA path depends on the kernel).
    - ``is_causal=True`` without ``attn_mask`` applies the causal mask (queries are the last L
      of the S key positions); torch raises RuntimeError.
    - ``is_causal=True`` with an ``attn_mask`` [L, L] trusts the hint on the fast path and
      never reads the mask, as torch's own SDPA path does; torch reads the mask when a
      ``key_padding_mask`` is also given. Give correct hints (torch's documentation asks the
      same).
    - fp16/bf16 softmax and returned weights are computed in float32 (float64 stays float64);
      torch computes the weights in the input dtype.
    - The compiled kernels (backends ``cpp``, ``cuda``, ``triton``) have first-order gradients
      only; double backward (gradient penalties) needs ``backend="reference"`` or
      ``need_weights=True``. torch's SDPA path has none either.
    - Errors are ``MultiheadAttentionError`` (a ValueError) that also subclass the type
      torch raises for the same input (AssertionError or RuntimeError), with messages that
      say which argument is wrong and how.
    """

    backend: str

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        if embed_dim > 0 and num_heads > 0 and embed_dim % num_heads:
            raise _AssertionInputError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if backend != "auto" and backend not in backend_names():
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {['auto', *backend_names()]}")
        super().__init__(
            embed_dim, num_heads, dropout=dropout, bias=bias, add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=batch_first,
            device=device, dtype=dtype,
        )
        self.backend = backend

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        seq_lens: Optional[Tensor] = None,
        agent_ids: Optional[Tensor] = None,
        agent_visibility: Optional[Tensor] = None,
        backend: Optional[str] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """torch's ``MultiheadAttention.forward`` plus the agentfast mask arguments.

        Args:
            query: ``[L, B, E]`` (``[B, L, E]`` with batch_first, ``[L, E]`` unbatched).
            key, value: ``[S, B, kdim/vdim]`` likewise.
            key_padding_mask: ``[B, S]`` (``[S]`` unbatched), bool (True = ignore) or float
                (added).
            need_weights: also return attention weights (dense path; False is faster).
            attn_mask: ``[L, S]`` or ``[B*num_heads, L, S]``, bool (True = not allowed) or
                float (added).
            average_attn_weights: average the returned weights over heads.
            is_causal: a hint that ``attn_mask`` is the causal mask; without ``attn_mask``
                it applies one (queries are the last L of the S key positions).
            seq_lens: int ``[B]``, keys at ``j >= seq_lens[b]`` are padding (no mask tensor).
            agent_ids: int ``[B, S]``, the agent of each key position; the query at i is the
                key position ``S - L + i``. agent_visibility: bool ``[A, A]`` / ``[B, A, A]``.
            backend: the ``agentfast.attention`` backend for this call (default: the module's).

        Returns:
            ``(attn_output, attn_weights)``: output shaped like ``query`` with embed_dim
            features (contiguous); weights ``[B, L, S]`` (``[B, H, L, S]`` without averaging,
            no batch dim when unbatched) or None.
        """
        if query.is_nested or key.is_nested or value.is_nested:
            if seq_lens is not None or agent_ids is not None or agent_visibility is not None:
                raise _AssertionInputError(
                    "seq_lens, agent_ids and agent_visibility do not apply to nested tensors; "
                    "pass padded tensors instead"
                )
            return self._torch_forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        is_batched = self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        if not is_batched:
            # One batch of one, laid out batch-first; masks gain their batch dim too.
            query, key, value = self._unsqueeze_batch(query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        batch_first = self.batch_first or not is_batched
        q, k, v = self._project(query, key, value, batch_first)
        batch, num_queries, num_keys = q.shape[0], q.shape[2], k.shape[2]
        self._check_masks(key_padding_mask, attn_mask, batch, num_queries, num_keys, is_batched)

        out: Optional[Tensor] = None
        weights: Optional[Tensor] = None
        if not torch.jit.is_scripting() and self._fast_path_possible(need_weights, q, k):
            out = self._fast_attention(
                q, k, v, attn_mask, key_padding_mask, is_causal, seq_lens, agent_ids, agent_visibility, backend
            )
        if out is None:
            contract: Optional[Tensor] = None
            if seq_lens is not None or agent_visibility is not None:
                if torch.jit.is_scripting():
                    raise _RuntimeInputError(
                        "seq_lens and agent_visibility are not available under TorchScript; "
                        "use eager mode or torch.compile, or pass them as masks"
                    )
                contract = self._contract_mask(q, num_keys, seq_lens, agent_ids, agent_visibility)
            out, weights = self._dense_attention(
                q, k, v, attn_mask, key_padding_mask, is_causal, contract, need_weights, average_attn_weights
            )
        result = self._output_projection(out, batch_first)
        if not is_batched:
            result = result.squeeze(0)
            if weights is not None:
                weights = weights.squeeze(0)
        return result, weights

    # -- inputs ---------------------------------------------------------------------------

    def _check_inputs(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor],
        attn_mask: Optional[Tensor],
    ) -> bool:
        """torch's checks with torch's exception types (as subclasses); True when batched."""
        if query.dim() != 2 and query.dim() != 3:
            raise _AssertionInputError(
                f"query must be [L, E] (unbatched) or 3-D [B, L, E] / [L, B, E], got a {query.dim()}-D tensor"
            )
        is_batched = query.dim() == 3
        kind = "batched (3-D)" if is_batched else "unbatched (2-D)"
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise _AssertionInputError(
                f"for {kind} query, key and value must be {query.dim()}-D like it, "
                f"got {key.dim()}-D key and {value.dim()}-D value"
            )
        if key_padding_mask is not None:
            _check_mask_dtype(key_padding_mask, "key_padding_mask")
            if key_padding_mask.dim() != query.dim() - 1:
                raise _AssertionInputError(
                    f"for {kind} query, key_padding_mask must be {query.dim() - 1}-D "
                    f"({'[B, S]' if is_batched else '[S]'}), got a {key_padding_mask.dim()}-D tensor"
                )
        if attn_mask is not None:
            _check_mask_dtype(attn_mask, "attn_mask")
            if attn_mask.dim() != 2 and attn_mask.dim() != 3:
                raise _AssertionInputError(
                    f"attn_mask must be 2-D [L, S] or 3-D [B * num_heads, L, S], got a {attn_mask.dim()}-D tensor"
                )
        if query.shape[-1] != self.embed_dim:
            raise _AssertionInputError(
                f"query has {query.shape[-1]} features, but embed_dim is {self.embed_dim}"
            )
        if self._qkv_same_embed_dim:
            if key.shape != value.shape:
                raise _AssertionInputError(
                    f"key shape {list(key.shape)} does not match value shape {list(value.shape)}"
                )
        elif key.shape[:-1] != value.shape[:-1]:
            raise _AssertionInputError(
                f"key and value differ in sequence or batch size: {list(key.shape)} and {list(value.shape)}"
            )
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise _AssertionInputError(
                f"key and value must have kdim={self.kdim} and vdim={self.vdim} features, "
                f"got {key.shape[-1]} and {value.shape[-1]}"
            )
        batch_dim = 0 if self.batch_first else 1
        if is_batched and query.shape[batch_dim] != key.shape[batch_dim]:
            raise _RuntimeInputError(
                f"query has batch size {query.shape[batch_dim]} but key and value have {key.shape[batch_dim]} "
                f"(batch_first={self.batch_first})"
            )
        return is_batched

    def _check_masks(
        self,
        key_padding_mask: Optional[Tensor],
        attn_mask: Optional[Tensor],
        batch: int,
        num_queries: int,
        num_keys: int,
        is_batched: bool,
    ) -> None:
        """Mask shapes against the batch-first sizes (torch's types: kpm and unbatched 3-D masks
        AssertionError, batched attn_mask RuntimeError)."""
        if key_padding_mask is not None and (
            key_padding_mask.shape[0] != batch or key_padding_mask.shape[1] != num_keys
        ):
            expected = [batch, num_keys] if is_batched else [num_keys]
            got = list(key_padding_mask.shape) if is_batched else list(key_padding_mask.shape[1:])
            raise _AssertionInputError(f"key_padding_mask must have shape {expected} ([B, S]), got {got}")
        if attn_mask is None:
            return
        if attn_mask.dim() == 2:
            expected = [num_queries, num_keys]
        else:
            expected = [batch * self.num_heads, num_queries, num_keys]
        if list(attn_mask.shape) != expected:
            message = (
                f"the {attn_mask.dim()}-D attn_mask has shape {list(attn_mask.shape)}, but should be {expected} "
                + ("[L, S]" if attn_mask.dim() == 2 else "[B * num_heads, L, S]")
            )
            if is_batched or attn_mask.dim() == 2:
                raise _RuntimeInputError(message)
            raise _AssertionInputError(message)

    def _unsqueeze_batch(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Unbatched inputs as a batch of one; keeps ``query is key is value`` for self-attention."""
        same_kv = key is value
        same_qkv = same_kv and query is key
        query = query.unsqueeze(0)
        key = query if same_qkv else key.unsqueeze(0)
        value = key if same_kv else value.unsqueeze(0)
        return query, key, value

    # -- projections ------------------------------------------------------------------------

    def _project(self, query: Tensor, key: Tensor, value: Tensor, batch_first: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k, v as ``[B, H, N, D]`` strided views of the projections, which are computed in
        the inputs' own layout (no transposed copies for seq-first inputs). Self-attention
        uses one fused qkv projection, ``key is value`` one fused kv projection."""
        embed = self.embed_dim
        bias = self.in_proj_bias
        in_proj_weight = self.in_proj_weight
        if in_proj_weight is not None:
            if query is key and key is value:
                q, k, v = self._heads(F.linear(query, in_proj_weight, bias), 3, batch_first)
                return q, k, v
            q_bias: Optional[Tensor] = None
            kv_bias: Optional[Tensor] = None
            if bias is not None:
                q_bias, kv_bias = bias[:embed], bias[embed:]
            (q,) = self._heads(F.linear(query, in_proj_weight[:embed], q_bias), 1, batch_first)
            if key is value:
                k, v = self._heads(F.linear(key, in_proj_weight[embed:], kv_bias), 2, batch_first)
                return q, k, v
            k_bias: Optional[Tensor] = None
            v_bias: Optional[Tensor] = None
            if bias is not None:
                k_bias, v_bias = bias[embed : 2 * embed], bias[2 * embed :]
            (k,) = self._heads(F.linear(key, in_proj_weight[embed : 2 * embed], k_bias), 1, batch_first)
            (v,) = self._heads(F.linear(value, in_proj_weight[2 * embed :], v_bias), 1, batch_first)
            return q, k, v
        q_weight, k_weight, v_weight = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        assert q_weight is not None and k_weight is not None and v_weight is not None
        biases: List[Optional[Tensor]] = [None, None, None]
        if bias is not None:
            biases = [bias[:embed], bias[embed : 2 * embed], bias[2 * embed :]]
        (q,) = self._heads(F.linear(query, q_weight, biases[0]), 1, batch_first)
        (k,) = self._heads(F.linear(key, k_weight, biases[1]), 1, batch_first)
        (v,) = self._heads(F.linear(value, v_weight, biases[2]), 1, batch_first)
        return q, k, v

    def _heads(self, x: Tensor, count: int, batch_first: bool) -> List[Tensor]:
        """Split ``[B, N, count*E]`` (``[N, B, count*E]`` seq-first) into ``count`` views
        ``[B, H, N, D]``."""
        x = x.view(x.shape[0], x.shape[1], count, self.num_heads, self.head_dim)
        x = x.permute(2, 0, 3, 1, 4) if batch_first else x.permute(2, 1, 3, 0, 4)
        return list(x.unbind(0))

    def _output_projection(self, out: Tensor, batch_first: bool) -> Tensor:
        """``[B, H, L, D]`` heads to the caller's layout, contiguous, then ``out_proj``."""
        batch, _, num_queries, _ = out.shape
        if batch_first:
            merged = out.transpose(1, 2).reshape(batch, num_queries, self.embed_dim)
        else:
            merged = out.permute(2, 0, 1, 3).reshape(num_queries, batch, self.embed_dim)
        return F.linear(merged, self.out_proj.weight, self.out_proj.bias)

    # -- fast path: masks the contract expresses --------------------------------------------

    def _fast_path_possible(self, need_weights: bool, q: Tensor, k: Tensor) -> bool:
        return not (
            need_weights
            or self.bias_k is not None
            or self.add_zero_attn
            or (self.training and self.dropout > 0.0)
            or self.head_dim > 256
            or q.numel() == 0
            or k.shape[2] == 0
            or q.shape[2] > k.shape[2]
        )

    @torch.jit.unused
    def _fast_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Optional[Tensor],
        key_padding_mask: Optional[Tensor],
        is_causal: bool,
        seq_lens: Optional[Tensor],
        agent_ids: Optional[Tensor],
        agent_visibility: Optional[Tensor],
        backend: Optional[str],
    ) -> Optional[Tensor]:
        """``agentfast.attention`` on the contract's form of the masks, or None when only the
        dense path can apply them."""
        masks = _contract_masks(
            attn_mask, is_causal, key_padding_mask, seq_lens, agent_ids, agent_visibility,
            q.shape[2], k.shape[2], q.device,
            inspect=not (torch.compiler.is_compiling() or torch.jit.is_tracing()),
        )
        if masks is None:
            return None
        causal, seq_lens, agent_ids, agent_visibility = masks
        return attention(
            q, k, v, causal=causal, seq_lens=seq_lens, agent_ids=agent_ids,
            agent_visibility=agent_visibility, backend=backend or self.backend,
        )

    # -- dense path: anything torch accepts, with weights -----------------------------------

    def _dense_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Optional[Tensor],
        key_padding_mask: Optional[Tensor],
        is_causal: bool,
        contract: Optional[Tensor],
        need_weights: bool,
        average_attn_weights: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Attention with every mask merged into one additive bias ``[B, 1 or H, L, S]``.

        The softmax runs in float32 for fp16/bf16 (float64 for float64); rows whose keys are
        all masked get a zero bias row and are zeroed afterwards (0, not NaN).
        """
        batch, heads, num_queries, _ = q.shape
        num_keys = k.shape[2]
        compute = torch.float64 if q.dtype == torch.float64 else torch.float32
        bias = _merged_bias(
            attn_mask, key_padding_mask, is_causal, contract, batch, heads, num_queries, num_keys, compute, q.device
        )
        k, v, bias = self._extra_keys(k, v, bias)
        has_key: Optional[Tensor] = None
        if bias is not None:
            has_key = (bias != float("-inf")).any(dim=-1, keepdim=True)
            bias = torch.where(has_key, bias, torch.zeros_like(bias))
        dropout = self.dropout if self.training else 0.0
        if not need_weights and q.numel() > 0 and k.shape[2] > 0:
            attn_bias: Optional[Tensor] = None
            if bias is not None:
                attn_bias = bias.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout)
            if has_key is not None:
                out = out * has_key.to(out.dtype)
            return out, None
        scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * (float(self.head_dim) ** -0.5)
        if bias is not None:
            scores = scores + bias
        probs = torch.softmax(scores, dim=-1)
        if has_key is not None:
            probs = probs * has_key.to(compute)
        if dropout > 0.0:
            probs = F.dropout(probs, p=dropout)
        out = torch.matmul(probs, v.to(compute)).to(q.dtype)
        if not need_weights:
            return out, None
        if average_attn_weights:
            probs = probs.mean(dim=1)
        return out, probs.to(q.dtype)

    def _extra_keys(self, k: Tensor, v: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Append torch's learned bias key/value and zero key/value (always attendable)."""
        batch, heads = k.shape[0], k.shape[1]
        bias_k, bias_v = self.bias_k, self.bias_v
        if bias_k is not None and bias_v is not None:
            k = torch.cat([k, bias_k.view(1, heads, 1, self.head_dim).expand(batch, -1, -1, -1).to(k.dtype)], dim=2)
            v = torch.cat([v, bias_v.view(1, heads, 1, self.head_dim).expand(batch, -1, -1, -1).to(v.dtype)], dim=2)
            if bias is not None:
                bias = F.pad(bias, (0, 1))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, heads, 1, self.head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(batch, heads, 1, self.head_dim)], dim=2)
            if bias is not None:
                bias = F.pad(bias, (0, 1))
        return k, v, bias

    @torch.jit.unused
    def _contract_mask(
        self,
        q: Tensor,
        num_keys: int,
        seq_lens: Optional[Tensor],
        agent_ids: Optional[Tensor],
        agent_visibility: Optional[Tensor],
    ) -> Tensor:
        """The seq_lens/agent part of the contract's rule as bool ``[B, 1, L, S]``."""
        batch = q.shape[0]
        visibility = None
        if agent_visibility is not None:
            if agent_ids is None:
                raise _AssertionInputError("agent_visibility was given without agent_ids; pass agent_ids [B, S]")
            visibility = agent_visibility.to(q.device)
            if visibility.dim() == 2:
                visibility = visibility.unsqueeze(0).expand(batch, -1, -1)
            agent_ids = agent_ids.to(q.device)
        return dense_mask(
            batch, q.shape[2], num_keys, q.device, causal=False,
            seq_lens=None if seq_lens is None else seq_lens.to(q.device),
            agent_ids=agent_ids, visibility=visibility,
        )

    # -- nested tensors ---------------------------------------------------------------------

    @torch.jit.unused
    def _torch_forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor],
        need_weights: bool,
        attn_mask: Optional[Tensor],
        average_attn_weights: bool,
        is_causal: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """torch's own forward (through the base class, never a name lookup that a patched
        ``torch.nn.MultiheadAttention`` could send back here)."""
        return super().forward(
            query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
        )


# ----------------------------------------------------------------------------- mask helpers


def _check_mask_dtype(mask: Tensor, name: str) -> None:
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise _AssertionInputError(f"{name} must be bool (True = masked) or float (added), got {mask.dtype}")


def _causal_allowed(num_queries: int, num_keys: int, device: torch.device) -> Tensor:
    """bool ``[L, S]``: query i (key position S - L + i) may see keys up to itself."""
    keys = torch.arange(num_keys, device=device)
    return keys.unsqueeze(0) <= keys[num_keys - num_queries :].unsqueeze(1)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """torch's mask convention as an additive float mask: bool True = -inf, float as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _merged_bias(
    attn_mask: Optional[Tensor],
    key_padding_mask: Optional[Tensor],
    is_causal: bool,
    contract: Optional[Tensor],
    batch: int,
    heads: int,
    num_queries: int,
    num_keys: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Optional[Tensor]:
    """All masks as one additive bias broadcastable to ``[B, H, L, S]`` (no larger than the
    masks need: ``[1, 1, L, S]`` for a 2-D attn_mask alone), or None for none."""
    bias: Optional[Tensor] = None
    if attn_mask is not None:
        if attn_mask.dim() == 3:
            bias = _additive(attn_mask, dtype).reshape(batch, heads, num_queries, num_keys)
        else:
            bias = _additive(attn_mask, dtype).reshape(1, 1, num_queries, num_keys)
    elif is_causal:
        allowed = _causal_allowed(num_queries, num_keys, device)
        bias = _additive(~allowed, dtype).view(1, 1, num_queries, num_keys)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).reshape(batch, 1, 1, num_keys)
        bias = padding if bias is None else bias + padding
    if contract is not None:
        if bias is None:
            bias = torch.zeros(batch, 1, num_queries, num_keys, dtype=dtype, device=device)
        bias = bias.masked_fill(~contract, float("-inf"))
    return bias


def _contract_masks(
    attn_mask: Optional[Tensor],
    is_causal: bool,
    key_padding_mask: Optional[Tensor],
    seq_lens: Optional[Tensor],
    agent_ids: Optional[Tensor],
    agent_visibility: Optional[Tensor],
    num_queries: int,
    num_keys: int,
    device: torch.device,
    inspect: bool,
) -> Optional[Tuple[bool, Optional[Tensor], Optional[Tensor], Optional[Tensor]]]:
    """torch's masks as the contract's ``(causal, seq_lens, agent_ids, agent_visibility)``, or
    None when they need the dense path. ``inspect=False`` (compiling, tracing) decides from
    dtypes, shapes and flags alone: no graph breaks, no host syncs."""
    causal = is_causal
    if attn_mask is not None:
        if is_causal and num_queries == num_keys:
            causal = True  # torch's hint: attn_mask is the causal mask
        elif not inspect:
            return None
        else:
            kind = _attn_mask_kind(attn_mask, num_queries, num_keys)
            if kind is None:
                return None
            causal = kind == "causal"
    if key_padding_mask is None:
        return causal, seq_lens, agent_ids, agent_visibility
    if key_padding_mask.dtype == torch.bool:
        blocked: Optional[Tensor] = key_padding_mask
    elif inspect:
        blocked = _blocked(key_padding_mask)
    else:
        return None  # a float mask may hold any values; only a look (a sync) could tell
    if blocked is None:
        return None
    if inspect:
        lengths = _right_padding_lengths(blocked)
        if lengths is not None:
            if seq_lens is not None:
                lengths = torch.minimum(seq_lens.to(device=device, dtype=lengths.dtype), lengths)
            return causal, lengths, agent_ids, agent_visibility
    as_agents = _padding_as_agents(blocked, agent_ids, agent_visibility)
    if as_agents is None:
        return None
    return causal, seq_lens, as_agents[0], as_agents[1]


def _attn_mask_kind(attn_mask: Tensor, num_queries: int, num_keys: int) -> Optional[str]:
    """"causal" or "none" when ``attn_mask`` ``[L, S]`` is the causal mask or masks nothing;
    None when only the dense path can apply it."""
    if attn_mask.dim() != 2:
        return None
    blocked = _blocked(attn_mask)
    if blocked is None:
        return None
    if not bool(blocked.any()):
        return "none"
    if torch.equal(blocked, ~_causal_allowed(num_queries, num_keys, attn_mask.device)):
        return "causal"
    return None


def _blocked(mask: Tensor) -> Optional[Tensor]:
    """bool mask of blocked entries, or None when a float mask holds values other than 0/-inf."""
    if mask.dtype == torch.bool:
        return mask
    blocked = mask == float("-inf")
    if bool(((mask != 0) & ~blocked).any()):
        return None
    return blocked


def _right_padding_lengths(blocked: Tensor) -> Optional[Tensor]:
    """Valid lengths ``[B]`` when ``blocked`` ``[B, S]`` pads only at the end of each row."""
    lengths = (~blocked).sum(dim=1)
    positions = torch.arange(blocked.shape[1], device=blocked.device)
    if not torch.equal(blocked, positions.unsqueeze(0) >= lengths.unsqueeze(1)):
        return None
    return lengths


def _padding_as_agents(
    blocked: Tensor, agent_ids: Optional[Tensor], agent_visibility: Optional[Tensor]
) -> Optional[Tuple[Tensor, Tensor]]:
    """Any key padding as the contract's agents, read from the mask without looking at it:
    each position's agent gains a bit "padded", and no agent sees a padded one. Without
    agents that is two agents, [[True, False], [True, False]]; with A agents, 2A (None past
    the contract's limit)."""
    padded = blocked.to(torch.int64)
    keep = torch.tensor([True, False], device=blocked.device)  # indexed by the seen key's padded bit
    if agent_visibility is None or agent_ids is None:
        return padded, keep.expand(2, 2)
    num_agents = agent_visibility.shape[-1]
    if 2 * num_agents > MAX_AGENTS:
        return None
    ids = agent_ids.to(blocked.device, torch.int64) * 2 + padded
    visibility = agent_visibility.to(blocked.device)
    lead = visibility.shape[:-2]
    # [..., a, pa, c, pc] = visibility[..., a, c] and not pc
    combined = visibility.unsqueeze(-1).unsqueeze(-3) & keep
    combined = combined.expand(*lead, num_agents, 2, num_agents, 2)
    return ids, combined.reshape(*lead, 2 * num_agents, 2 * num_agents)
