"""The ``reference`` backend: the oracle of ``agentfast.attention.reference`` as a backend."""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference import reference_attention, reference_attention_and_weights
from .base import AttentionBackend, AttentionCall


class ReferenceBackend(AttentionBackend):
    name = "reference"
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    max_head_dim = 1 << 30
    supports_grouped_query = True

    def forward(self, call: AttentionCall) -> Tensor:
        return reference_attention(call.q, call.k, call.v, **_rule(call))

    def forward_with_weights(self, call: AttentionCall) -> tuple[Tensor, Tensor]:
        """The output and the attention probabilities ``[B, H, Nq, Nk]`` (float32, or
        float64 for float64 inputs)."""
        return reference_attention_and_weights(call.q, call.k, call.v, **_rule(call))


def _rule(call: AttentionCall) -> dict:
    compute = torch.float64 if call.dtype == torch.float64 else torch.float32
    return dict(causal=call.causal, seq_lens=call.seq_lens, agent_ids=call.agent_ids,
                visibility=call.visibility, scale=call.scale, compute_dtype=compute)


BACKEND = ReferenceBackend()
