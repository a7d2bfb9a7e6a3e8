"""The ``sdpa`` backend: ``torch.nn.functional.scaled_dot_product_attention``.

Causal-only calls use torch's built-in causal handling (so the flash kernel can run on GPU);
anything with padding or agents passes a materialised boolean mask, which limits torch to
its efficient/math kernels. Rows with no allowed key are given one harmless key and their
output is zeroed afterwards, so they return 0 with zero gradient instead of NaN.
Grouped-query calls (k/v with fewer heads than q) use SDPA's ``enable_gqa``, so k/v are not
repeated in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mask import dense_mask
from .base import AttentionBackend, AttentionCall


class SdpaBackend(AttentionBackend):
    name = "sdpa"
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    max_head_dim = 1 << 30
    supports_grouped_query = True

    def forward(self, call: AttentionCall) -> Tensor:
        q, k, v = call.q, call.k, call.v
        num_queries, num_keys = q.shape[2], k.shape[2]
        gqa = {"enable_gqa": True} if call.group_size > 1 else {}
        if call.seq_lens is None and not call.has_agents:
            if not call.causal or num_queries == 1:
                return F.scaled_dot_product_attention(q, k, v, scale=call.scale, **gqa)
            if num_queries == num_keys:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=call.scale, **gqa)
        allowed = dense_mask(
            q.shape[0], num_queries, num_keys, q.device,
            causal=call.causal, seq_lens=call.seq_lens,
            agent_ids=call.agent_ids, visibility=call.visibility,
        )
        has_key = allowed.any(dim=-1, keepdim=True)
        # A row with no key would be softmax over nothing (NaN); let it see key 0 and zero it.
        first_key = torch.zeros_like(allowed)
        first_key[..., 0] = True
        allowed = allowed | (~has_key & first_key)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=call.scale, **gqa)
        return out * has_key.to(out.dtype)


BACKEND = SdpaBackend()
