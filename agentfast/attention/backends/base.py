"""What every attention backend is: a name, a support check that explains itself, a call."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AttentionCall:
    """One validated call of ``agentfast.attention``.

    q: [B, H, Nq, D]; k, v: [B, Hkv, Nk, D] with H a multiple of Hkv (strides as the caller
    gave them).
    seq_lens: int [B] or None. agent_ids: int [B, Nk] or None.
    visibility: bool [B, A, A] or None (already expanded over the batch).
    agent_bitmask: int64 [B, A] or None (bit c of row a = a sees c); set iff visibility is.
    scale: the softmax scale, already resolved.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    causal: bool
    seq_lens: Tensor | None
    agent_ids: Tensor | None
    visibility: Tensor | None
    agent_bitmask: Tensor | None
    scale: float

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1]

    @property
    def kv_heads(self) -> int:
        return self.k.shape[1]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head: 1 for plain multi-head attention."""
        return self.q.shape[1] // self.k.shape[1]

    @property
    def has_agents(self) -> bool:
        return self.visibility is not None

    @property
    def needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(t.requires_grad for t in (self.q, self.k, self.v))


class AttentionBackend:
    """Base class of a backend. Subclasses set ``name`` and implement the three methods.

    ``unavailable_reason`` says why the backend cannot run at all on this installation
    (missing package or build); ``why_not`` says why it cannot serve one particular call.
    Both return ``None`` when all is well, and a sentence a user can act on otherwise.
    """

    name: str = "?"
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
    max_head_dim: int = 256
    supports_grouped_query: bool = False

    def unavailable_reason(self) -> str | None:
        return None

    def why_not(self, call: AttentionCall) -> str | None:
        reason = self.unavailable_reason()
        if reason is not None:
            return reason
        if call.device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)}, not {call.device.type}"
        if call.dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"supports dtypes {names}, not {str(call.dtype).removeprefix('torch.')}"
        if call.head_dim > self.max_head_dim:
            return f"supports head dim <= {self.max_head_dim}, got {call.head_dim}"
        if call.group_size > 1 and not self.supports_grouped_query:
            return (f"does not support grouped-query attention (q has {call.q.shape[1]} heads, "
                    f"k/v {call.kv_heads})")
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<attention backend {self.name!r}>"


class UnimportableBackend(AttentionBackend):
    """A backend whose module failed to import: listed, and never usable, with the reason."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name
        self._error = error

    def unavailable_reason(self) -> str | None:
        return f"its module failed to import: {type(self._error).__name__}: {self._error}"
