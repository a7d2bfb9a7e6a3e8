"""Key/value cache for incremental (token by token) inference with the agentfast models.

A cache holds, for every layer, the keys and values of the tokens fed so far, preallocated
to the model's full token budget (``max_seq_len`` steps times tokens per step), plus the
agent id of each token (used by agent-masked models). Models append tokens through their
``step`` methods; the cache only stores and grows.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys/values of the tokens already processed, for ``model.step(...)``.

    Create one with ``model.new_cache(batch_size, device=None, dtype=None)`` rather than
    directly. All rows of the batch advance together, one token group per call.

    Attributes:
        keys, values: one tensor ``[B, H, max_tokens, D]`` per layer; positions
            ``[0, length)`` are filled.
        agent_ids: long ``[B, max_tokens]``, the agent of each filled token (0 when the
            model has no agents).
        length: number of tokens stored.
        tokens_per_step: tokens one timestep contributes (2: s, a; 3: s, o, a).
    """

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_tokens: int,
        tokens_per_step: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shape = (batch_size, num_heads, max_tokens, head_dim)
        dtype = dtype or torch.get_default_dtype()
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.agent_ids = torch.zeros(batch_size, max_tokens, dtype=torch.long, device=device)
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.tokens_per_step = tokens_per_step
        self.length = 0

    @property
    def device(self) -> torch.device:
        return self.agent_ids.device

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype if self.keys else torch.get_default_dtype()

    @property
    def num_steps(self) -> int:
        """Timesteps started so far (a step counts once its first token is in)."""
        return -(-self.length // self.tokens_per_step)

    @property
    def token_phase(self) -> int:
        """Index within its step of the next token to append (0 = a state token next)."""
        return self.length % self.tokens_per_step

    def reset(self) -> None:
        """Forget every stored token; the buffers are kept for reuse."""
        self.length = 0

    def check_room(self, num_new: int) -> None:
        if self.length + num_new > self.max_tokens:
            raise ValueError(
                f"KV cache is full: it holds {self.length} of {self.max_tokens} tokens "
                f"({self.max_tokens // self.tokens_per_step} steps = the model's max_seq_len) "
                f"and {num_new} more were appended; call cache.reset() or make a new cache"
            )

    def write(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``[B, H, n, D]`` new keys/values after the filled positions of ``layer``
        and return views of all keys/values up to and including them."""
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length : end] = key
        self.values[layer][:, :, self.length : end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def write_agent_ids(self, agent_ids: Tensor) -> Tensor:
        """Store the agents ``[B, n]`` of the new tokens; return the agents of all tokens."""
        end = self.length + agent_ids.shape[1]
        self.agent_ids[:, self.length : end] = agent_ids
        return self.agent_ids[:, :end]

    def advance(self, num_new: int) -> None:
        """Mark ``num_new`` tokens as stored (after every layer has written them)."""
        self.length += num_new

    def __repr__(self) -> str:
        return (
            f"KVCache(batch_size={self.batch_size}, length={self.length}/{self.max_tokens} tokens, "
            f"layers={len(self.keys)}, dtype={self.dtype}, device={self.device})"
        )
