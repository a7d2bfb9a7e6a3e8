"""Masked attention: one contract (``attention``), many backends.

The contract is in ``docs/attention-contract.md``: q ``[B, H, Nq, D]``, k/v
``[B, Hkv, Nk, D]``; query i (key position ``p = Nk - Nq + i``) attends key j iff causal
order, padding (``seq_lens``) and agent visibility allow it; a row with no allowed key is 0.

Importing this package imports no torch; the first call does (so ``agentfast --help`` and
the command line's parsers start quickly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from torch import Tensor

_EXPORTS = {
    "AttentionInputError": ".api",
    "BackendUnavailableError": ".api",
    "attention_with_weights": ".api",
    "explain": ".api",
    "make_call": ".api",
    "select_backend": ".api",
    "backend_names": ".backends",
    "get_backend": ".backends",
    "dense_mask": ".mask",
    "reference_attention": ".reference",
    "reference_attention_weights": ".reference",
    "bitmask_to_visibility": "agentfast.visibility",
    "visibility_to_bitmask": "agentfast.visibility",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["attention", *sorted(_EXPORTS)]


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, seq_lens: Tensor | None = None,
              agent_ids: Tensor | None = None, agent_visibility: Tensor | None = None,
              scale: float | None = None, backend: str = "auto") -> Tensor:
    """Masked multi-head attention under the agentfast contract (``docs/attention-contract.md``).

    Args:
        q: ``[B, H, Nq, D]`` queries, the last Nq positions of the key sequence.
        k, v: ``[B, Hkv, Nk, D]``, H a multiple of Hkv (grouped-query attention). Strided
            views (a fused qkv split) are fine.
        causal: query at position p sees keys ``j <= p``.
        seq_lens: int ``[B]``, keys at ``j >= seq_lens[b]`` are padding.
        agent_ids: int ``[B, Nk]`` in ``[0, A)``, the agent of each position.
        agent_visibility: bool ``[A, A]`` or ``[B, A, A]``; row = attending agent. A <= 64.
        scale: softmax scale, default ``D ** -0.5``.
        backend: ``auto``, ``reference``, ``sdpa``, ``flex``, ``triton``, ``cuda`` or ``cpp``.

    Returns:
        ``[B, H, Nq, D]`` in q's dtype; rows with no allowed key are exactly 0.

    Raises:
        AttentionInputError: an argument breaks the contract.
        BackendUnavailableError: a named backend cannot serve the call (message says why).
    """
    from .api import attention as attend  # the first call loads torch and the backends

    return attend(q, k, v, causal=causal, seq_lens=seq_lens, agent_ids=agent_ids,
                  agent_visibility=agent_visibility, scale=scale, backend=backend)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

