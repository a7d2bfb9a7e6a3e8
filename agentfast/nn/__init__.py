"""Drop-in ``torch.nn`` modules backed by ``agentfast.attention``."""

from .multihead_attention import MultiheadAttention, MultiheadAttentionError

__all__ = ["MultiheadAttention", "MultiheadAttentionError"]
