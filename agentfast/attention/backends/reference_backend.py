"""The ``reference`` backend: the oracle of ``agentfast.attention.reference`` as a backend."""

from __future__ import annotations

import torch
from torch import Tensor

from ..reference import reference_attention
from .base import AttentionBackend, AttentionCall


class ReferenceBackend(AttentionBackend):
    name = "reference"
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    max_head_dim = 1 << 30
    supports_grouped_query = True

    def forward(self, call: AttentionCall) -> Tensor:
        compute = torch.float64 if call.dtype == torch.float64 else torch.float32
        return reference_attention(
            call.q, call.k, call.v,
            causal=call.causal, seq_lens=call.seq_lens, agent_ids=call.agent_ids,
            visibility=call.visibility, scale=call.scale, compute_dtype=compute,
        )


BACKEND = ReferenceBackend()
