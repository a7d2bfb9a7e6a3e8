"""Drop-in ``torch.nn`` modules backed by ``agentfast.attention``."""

from .multihead_attention import MultiheadAttention

__all__ = ["MultiheadAttention"]
