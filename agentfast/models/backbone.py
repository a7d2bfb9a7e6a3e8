"""The pre-LayerNorm transformer shared by the three agentfast models, and its input checks.

Every model turns a timestep into a fixed group of tokens (s_t, a_t or s_t, o_t, a_t),
interleaves the groups into one sequence and runs it through ``TransformerBackbone``.
Attention goes through ``agentfast.attention`` with the model's ``attn_backend``, so the
padding (``seq_lens``) and agent-visibility rules of the contract are applied by whichever
kernel serves the call, and a ``KVCache`` turns the same code into incremental inference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..attention.api import attention, attention_with_weights
from .config import PolicyConfig
from .kv_cache import KVCache
from .outputs import PolicyOutputs
from .policy_files import (
    WEIGHTS_FILE,
    CheckpointError,
    build_saved_model,
    load_weights,
    read_pretrained_config,
    write_policy,
)

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# ----------------------------------------------------------------------------- input checks


def _on_cpu_or_assert(bad: Tensor, message: Callable[[], str]) -> None:
    """Raise ``ValueError(message())`` if any ``bad``; on accelerators assert without a
    host sync (the message is then generic, as the values stay on the device)."""
    if torch.compiler.is_compiling():
        return
    if bad.device.type == "cpu":
        if bool(bad.any()):
            raise ValueError(message())
    else:
        torch._assert_async(~bad.any(), "agentfast model input out of range (run on CPU for details)")


def check_float_input(name: str, value: Any, shape: Sequence[int | None]) -> Tensor:
    """``value`` must be a floating tensor of ``shape`` (``None`` = any size there)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {value.dtype}")
    _check_shape(name, value, shape)
    return value


def _check_shape(name: str, value: Tensor, shape: Sequence[int | None]) -> None:
    ok = value.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, value.shape))
    if not ok:
        wanted = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{wanted}], got {list(value.shape)}")


def check_num_steps(num_steps: int, max_seq_len: int) -> None:
    if num_steps < 1:
        raise ValueError("sequences must have at least one timestep, got T=0")
    if num_steps > max_seq_len:
        raise ValueError(
            f"sequence has T={num_steps} timesteps but the model's max_seq_len is {max_seq_len}; "
            "truncate the episodes or build the model with a larger max_seq_len"
        )


def check_seq_lens(seq_lens: Any, batch: int, num_steps: int, device: torch.device) -> Tensor | None:
    """``seq_lens`` (valid timesteps per row) as a long tensor ``[B]`` on ``device``, or None."""
    if seq_lens is None:
        return None
    if not isinstance(seq_lens, Tensor):
        seq_lens = torch.as_tensor(seq_lens)
    if seq_lens.dtype not in _INT_DTYPES:
        raise TypeError(f"seq_lens must be an integer tensor, got {seq_lens.dtype}")
    _check_shape("seq_lens", seq_lens, (batch,))
    seq_lens = seq_lens.to(device=device, dtype=torch.long)
    _on_cpu_or_assert(
        (seq_lens < 0) | (seq_lens > num_steps),
        lambda: f"seq_lens must lie in [0, T={num_steps}], got {seq_lens.tolist()}",
    )
    return seq_lens


def zero_padding(values: Tensor, valid: Tensor | None) -> Tensor:
    """``values`` ``[B, T, ...]`` with padded steps set to 0 before they are embedded, so that
    NaN/inf padding reaches neither the outputs nor, through 0 * NaN in a weight gradient,
    the parameters."""
    if valid is None:
        return values
    return values.masked_fill(~valid.reshape(*valid.shape, *([1] * (values.dim() - valid.dim()))), 0)


def valid_steps(seq_lens: Tensor | None, batch: int, num_steps: int, device: torch.device) -> Tensor | None:
    """bool ``[B, T]``: True at timesteps inside ``seq_lens`` (None when all are valid)."""
    if seq_lens is None:
        return None
    return torch.arange(num_steps, device=device)[None, :] < seq_lens[:, None]


def check_index_input(
    name: str, value: Any, shape: Sequence[int], num_classes: int, valid: Tensor | None
) -> Tensor:
    """An integer tensor of ``shape`` with entries in ``[0, num_classes)`` at ``valid``
    positions. Entries at padded positions may hold anything (e.g. -100); they become 0."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer (long) tensor, got {value.dtype}")
    _check_shape(name, value, shape)
    value = value.long()
    if valid is not None:
        value = torch.where(valid, value, torch.zeros_like(value))
    _on_cpu_or_assert(
        (value < 0) | (value >= num_classes),
        lambda: f"{name} must lie in [0, {num_classes}) at valid timesteps; "
        f"got values in [{int(value.min())}, {int(value.max())}]",
    )
    return value


def interleave(*streams: Tensor) -> Tensor:
    """``K`` tensors ``[B, T, E]`` -> ``[B, T*K, E]`` ordered step by step (x1_1, x2_1, ..., x1_2, ...)."""
    stacked = torch.stack(streams, dim=2)
    return stacked.reshape(stacked.shape[0], -1, stacked.shape[-1])


def token_stream(interleaved: Tensor, index: int, tokens_per_step: int) -> Tensor:
    """Inverse of ``interleave`` for one stream: the ``index``-th token of every step."""
    batch, num_tokens, dim = interleaved.shape
    return interleaved.view(batch, num_tokens // tokens_per_step, tokens_per_step, dim)[:, :, index]


# ----------------------------------------------------------------------------- the network


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, embed_dim: int, num_heads: int, hidden_dim: int, dropout: float, attn_backend: str):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attn_backend = attn_backend
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.attn_out = nn.Linear(embed_dim, embed_dim)
        self.mlp_norm = nn.LayerNorm(embed_dim)
        self.mlp_in = nn.Linear(embed_dim, hidden_dim)
        self.mlp_out = nn.Linear(hidden_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        # A list while TransformerBackbone.capture_attention() runs: this layer then computes
        # attention with the reference backend and appends its weights. A plain attribute
        # (no hook), so the normal path costs one None check and compiles as before.
        self.captured_attention: list[Tensor] | None = None

    def forward(
        self,
        x: Tensor,
        seq_lens: Tensor | None = None,
        agent_ids: Tensor | None = None,
        agent_visibility: Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
    ) -> Tensor:
        x = x + self.dropout(self._attend(self.attn_norm(x), seq_lens, agent_ids, agent_visibility, cache, layer_index))
        return x + self.dropout(self.mlp_out(self.dropout(F.gelu(self.mlp_in(self.mlp_norm(x))))))

    def _attend(
        self,
        x: Tensor,
        seq_lens: Tensor | None,
        agent_ids: Tensor | None,
        agent_visibility: Tensor | None,
        cache: KVCache | None,
        layer_index: int,
    ) -> Tensor:
        batch, num_tokens, embed_dim = x.shape
        # One fused projection; q, k, v are strided views of it (the contract takes strides).
        qkv = self.qkv(x).view(batch, num_tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D], no copy
        if cache is not None:
            k, v = cache.write(layer_index, k, v)
            q = q.to(k.dtype)  # under autocast the cache keeps its own dtype
        rule = dict(causal=True, seq_lens=seq_lens, agent_ids=agent_ids, agent_visibility=agent_visibility)
        if self.captured_attention is None:
            out = attention(q, k, v, **rule, backend=self.attn_backend)
        else:
            out, weights = attention_with_weights(q, k, v, **rule)
            self.captured_attention.append(weights.detach())
        return self.attn_out(out.to(x.dtype).transpose(1, 2).reshape(batch, num_tokens, embed_dim))


class TransformerBackbone(nn.Module):
    """Timestep embedding + ``num_layers`` pre-LN blocks + final LayerNorm over token groups.

    ``tokens_per_step`` tokens form one timestep; they share its timestep embedding.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        max_seq_len: int,
        tokens_per_step: int,
        dropout: float = 0.0,
        attn_backend: str = "auto",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.max_seq_len = max_seq_len
        self.tokens_per_step = tokens_per_step
        self.gradient_checkpointing = gradient_checkpointing
        self.timestep_embed = nn.Embedding(max_seq_len, embed_dim)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, hidden_dim, dropout, attn_backend) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(embed_dim)

    @property
    def attn_backend(self) -> str:
        return self.blocks[0].attn_backend if len(self.blocks) else "auto"

    @attn_backend.setter
    def attn_backend(self, name: str) -> None:
        for block in self.blocks:
            block.attn_backend = name

    @contextlib.contextmanager
    def capture_attention(self) -> Iterator[list[Tensor]]:
        """Record the attention weights of every layer during the forwards inside the block.

        Inside the block each layer attends with the reference backend (fused kernels never
        materialise the probabilities; outputs equal those of ``attn_backend="reference"``)
        and appends its weights, float32 ``[B, H, Nq, Nk]``, to the yielded list: one
        forward adds ``num_layers`` tensors, first layer first. Gradient checkpointing
        pauses meanwhile (its recomputation would record a layer twice). On leaving the
        block every layer goes back to its own backend::

            with model.backbone.capture_attention() as weights:
                model(states, actions)
        """
        if any(block.captured_attention is not None for block in self.blocks):
            raise RuntimeError("capture_attention() is already active on this backbone")
        record: list[Tensor] = []
        for block in self.blocks:
            block.captured_attention = record
        try:
            yield record
        finally:
            for block in self.blocks:
                block.captured_attention = None

    def forward(
        self,
        tokens: Tensor,
        *,
        seq_lens: Tensor | None = None,
        agent_ids: Tensor | None = None,
        agent_visibility: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Run ``tokens`` ``[B, N, E]`` through the network and return ``[B, N, E]``.

        seq_lens: valid *tokens* per row (only without a cache). agent_ids: ``[B, N]``
        agent of each token; agent_visibility: bool ``[A, A]`` / ``[B, A, A]``.
        With ``cache``, the tokens are appended after the cached ones and attend to them.
        """
        first = 0
        if cache is not None:
            if seq_lens is not None:
                raise ValueError("seq_lens cannot be combined with a KV cache; rows of a cache advance together")
            cache.check_room(tokens.shape[1])
            first = cache.length
            if agent_ids is not None:
                agent_ids = cache.write_agent_ids(agent_ids)
        positions = torch.arange(first, first + tokens.shape[1], device=tokens.device)
        if seq_lens is not None:
            # Padded tokens carry no information; zero them so that attention backends never see
            # what the embeddings made of the padding.
            tokens = torch.where((positions[None, :] < seq_lens[:, None])[..., None], tokens, torch.zeros_like(tokens))
        x = tokens + self.timestep_embed(positions // self.tokens_per_step)
        x = self.embed_dropout(self.embed_norm(x))
        capturing = len(self.blocks) > 0 and self.blocks[0].captured_attention is not None
        use_checkpoint = self.gradient_checkpointing and cache is None and torch.is_grad_enabled() and not capturing
        for index, block in enumerate(self.blocks):
            if use_checkpoint:
                # Recompute activations in backward; RNG state is replayed so dropout matches.
                x = checkpoint(block, x, seq_lens, agent_ids, agent_visibility, use_reentrant=False)
            else:
                x = block(x, seq_lens, agent_ids, agent_visibility, cache, index)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.final_norm(x)


class SequencePolicy(nn.Module):
    """Shared plumbing of the policies: config, backbone, weight init, caches, checks, and
    the hooks through which the trainer and the pipeline use any policy alike.

    A policy class sets ``config_class`` (its configuration dataclass, whose fields are the
    constructor's arguments) and ``positional_args`` (which of them may be passed by
    position, in the order of the original model API: ``state_dim``, ``action_dim``, ...). ``Policy(...)`` takes those arguments, or
    ``Policy(config=...)``; ``model.config`` is the configuration.

    Hooks each policy implements:

    * ``forward_batch(batch)``: the outputs for a collated batch
      (``agentfast.data.collate_episodes``), named uniformly as ``PolicyOutputs``;
    * ``predict_next(cache, state, prev_action, ...)``: one turn of incremental inference.

    ``uses_agents`` / ``uses_returns`` say whether the policy takes acting agents and
    their visibility, or returns-to-go. ``token_kinds()`` names the tokens of one step in
    stream order (what ``agentfast inspect`` marks on its attention maps).
    """

    config_class: ClassVar[type[PolicyConfig]]
    positional_args: ClassVar[tuple[str, ...]] = ("state_dim", "action_dim")
    tokens_per_step: ClassVar[int] = 2
    uses_agents: ClassVar[bool] = False
    uses_returns: ClassVar[bool] = False
    step_tokens: ClassVar[tuple[str, ...]] = ("state", "action")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:
            cls.__signature__ = _constructor_signature(cls.config_class, cls.positional_args)

    def __init__(self, *args: Any, config: PolicyConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = self.config_class(**_named_arguments(type(self).__name__, self.positional_args, args, kwargs))
        elif args or kwargs:
            raise TypeError(f"{type(self).__name__} takes either config= or its arguments, not both")
        elif not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        self.state_dim = config.state_dim
        self.action_dim = config.action_dim
        self.embed_dim = config.embed_dim
        self.max_seq_len = config.max_seq_len
        self.discrete_actions = bool(config.discrete_actions)
        self.backbone = TransformerBackbone(
            embed_dim=config.embed_dim,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            max_seq_len=config.max_seq_len,
            tokens_per_step=self.tokens_per_step,
            dropout=config.dropout,
            attn_backend=config.attn_backend,
            gradient_checkpointing=config.gradient_checkpointing,
        )
        self.state_embed = nn.Linear(config.state_dim, config.embed_dim)
        if self.discrete_actions:
            self.action_embed: nn.Module = nn.Embedding(config.action_dim, config.embed_dim)
        else:
            self.action_embed = nn.Linear(config.action_dim, config.embed_dim)

    # -- hooks ----------------------------------------------------------------------------

    def forward_batch(self, batch: Mapping[str, Any], *, module: nn.Module | None = None) -> PolicyOutputs:
        """The outputs for a collated batch. ``module`` runs the forward pass (default: this
        policy; the trainer passes its DistributedDataParallel wrapper)."""
        raise NotImplementedError

    def predict_next(self, cache: KVCache, state: Tensor, prev_action: Tensor | None = None, *,
                     agent_id: Tensor | None = None, agent_mask: Any = None,
                     return_to_go: Tensor | None = None) -> PolicyOutputs:
        """One turn of incremental inference: append the previous turn's action (None at the
        first turn) and this turn's state ``[B, state_dim]``, and predict this turn's action.

        ``agent_id`` / ``agent_mask`` apply to policies that ``uses_agents``,
        ``return_to_go`` to those that ``uses_returns``.
        """
        raise NotImplementedError

    def token_kinds(self) -> tuple[str, ...]:
        """The kind of each token of one step, in stream order: ``state``, ``option``,
        ``action``; ``state+return`` where a return-to-go is added to the state token."""
        if self.uses_returns and getattr(self.config, "condition_on_returns", False):
            return tuple("state+return" if kind == "state" else kind for kind in self.step_tokens)
        return self.step_tokens

    def batch_actions(self, batch: Mapping[str, Any]) -> Tensor:
        """The action input of a batch: embeddings, or ids with padding (-100) mapped to a
        valid id."""
        if self.discrete_actions:
            return batch["action_ids"].clamp_min(0)
        return batch["actions"]

    def _add_action_and_value_heads(self) -> None:
        """The heads read from the state tokens: the action, and the value of the state."""
        self.action_head = nn.Linear(self.embed_dim, self.config.action_dim)
        self.value_head = nn.Linear(self.embed_dim, 1)

    def _init_weights(self) -> None:
        """GPT-style init: N(0, 0.02) weights, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- public knobs ---------------------------------------------------------------------

    @property
    def attn_backend(self) -> str:
        """The ``agentfast.attention`` backend every layer uses; assignable."""
        return self.backbone.attn_backend

    @attn_backend.setter
    def attn_backend(self, name: str) -> None:
        self.backbone.attn_backend = name
        self.config.attn_backend = name

    @property
    def gradient_checkpointing(self) -> bool:
        return self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self.backbone.gradient_checkpointing = bool(enabled)
        self.config.gradient_checkpointing = bool(enabled)

    def save_pretrained(self, directory: str | os.PathLike[str], **extras: Any) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (each atomically) to ``directory``;
        ``extras`` (metadata, vocab, action_bank) as ``agentfast.models.save_pretrained``
        takes them. ``agentfast train`` writes its policies this way."""
        return write_policy(directory, self, model_type=self.config.model_type, **extras)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], device: torch.device | str = "cpu") -> "SequencePolicy":
        """The model saved in ``directory`` (by ``save_pretrained`` or ``agentfast train``),
        weights checked key by key, in eval mode on ``device``."""
        config = read_pretrained_config(directory)
        if config["model_type"] != cls.config_class.model_type:
            saved = config.get("model_class", config["model_type"])
            raise CheckpointError(f"{directory} holds a {saved}, not a {cls.__name__}")
        model = build_saved_model(cls, config)
        load_weights(model, Path(directory) / WEIGHTS_FILE)
        return model.to(device).eval()

    def new_cache(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """A KV cache for ``batch_size`` sequences of up to ``max_seq_len`` steps.

        device/dtype default to those of the model's parameters.
        """
        weight = self.state_embed.weight
        first = self.backbone.blocks[0] if len(self.backbone.blocks) else None
        return KVCache(
            num_layers=len(self.backbone.blocks),
            batch_size=batch_size,
            num_heads=first.num_heads if first else 1,
            head_dim=first.head_dim if first else 1,
            max_tokens=self.max_seq_len * self.tokens_per_step,
            tokens_per_step=self.tokens_per_step,
            device=weight.device if device is None else device,
            dtype=weight.dtype if dtype is None else dtype,
        )

    # -- shared input handling ------------------------------------------------------------

    def _param_dtype(self) -> torch.dtype:
        return self.state_embed.weight.dtype

    def _embed_states(self, states: Tensor, batch: int, num_steps: int | None, valid: Tensor | None = None) -> Tensor:
        shape = (batch, num_steps, self.state_dim) if num_steps is not None else (batch, self.state_dim)
        check_float_input("states", states, shape)
        return self.state_embed(zero_padding(states.to(self._param_dtype()), valid))

    def _embed_actions(self, actions: Any, batch: int, num_steps: int | None, valid: Tensor | None) -> Tensor:
        """Embed actions ``[B, T, action_dim]`` float or ``[B, T]`` long (``num_steps=None``:
        one step, ``[B, action_dim]`` or ``[B]``)."""
        lead = (batch, num_steps) if num_steps is not None else (batch,)
        name = "actions" if num_steps is not None else "prev_action"
        if self.discrete_actions:
            if isinstance(actions, Tensor) and actions.is_floating_point():
                raise TypeError(
                    f"{name} must hold action indices (long) because discrete_actions=True; got {actions.dtype}"
                )
            indices = check_index_input(name, actions, lead, self.action_dim, valid)
            return self.action_embed(indices)
        if isinstance(actions, Tensor) and not actions.is_floating_point():
            raise TypeError(
                f"{name} must be float action vectors because discrete_actions=False; got {actions.dtype} "
                "(build the model with discrete_actions=True for action indices)"
            )
        check_float_input(name, actions, (*lead, self.action_dim))
        return self.action_embed(zero_padding(actions.to(self._param_dtype()), valid))

    def _batch_and_steps(self, states: Any) -> tuple[int, int]:
        if not isinstance(states, Tensor):
            raise TypeError(f"states must be a torch.Tensor, got {type(states).__name__}")
        if states.dim() != 3:
            raise ValueError(f"states must have shape [B, T, state_dim], got {list(states.shape)}")
        batch, num_steps = states.shape[:2]
        check_num_steps(num_steps, self.max_seq_len)
        return batch, num_steps

    def _step_batch(self, state: Any) -> int:
        """Batch size of a one-step ``state`` ``[B, state_dim]`` (checked)."""
        check_float_input("state", state, (None, self.state_dim))
        return state.shape[0]

    def _check_cache(self, cache: Any, batch: int) -> KVCache:
        if self.training and float(self.config.dropout) > 0:
            warnings.warn(
                f"{type(self).__name__}.step() in training mode: dropout is active, so steps are random "
                "and differ from forward(); call model.eval() for inference",
                RuntimeWarning,
                stacklevel=3,
            )
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must come from model.new_cache(...), got {type(cache).__name__}")
        if cache.batch_size != batch:
            raise ValueError(f"cache was made for batch_size={cache.batch_size}, got a batch of {batch}")
        if cache.tokens_per_step != self.tokens_per_step or len(cache.keys) != len(self.backbone.blocks):
            raise ValueError("cache was made by a different kind of model; use this model's new_cache()")
        return cache

    def _token_seq_lens(self, seq_lens: Tensor | None) -> Tensor | None:
        return None if seq_lens is None else seq_lens * self.tokens_per_step


def _named_arguments(owner: str, positional: tuple[str, ...], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> dict[str, Any]:
    """``args`` named by ``positional`` and merged with ``kwargs``, as Python would."""
    if len(args) > len(positional):
        raise TypeError(f"{owner}() takes at most {len(positional)} positional arguments "
                        f"({', '.join(positional)}), got {len(args)}")
    named = dict(zip(positional, args))
    both = sorted(named.keys() & kwargs.keys())
    if both:
        raise TypeError(f"{owner}() got multiple values for argument {both[0]!r}")
    return {**named, **kwargs}


def _constructor_signature(config_class: type[PolicyConfig], positional: tuple[str, ...]) -> inspect.Signature:
    """The signature a policy's constructor presents: the config's fields, ``positional``
    ones first and in that order, then ``config``."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}

    def parameter(name: str, kind: inspect._ParameterKind) -> inspect.Parameter:
        f = fields[name]
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        return inspect.Parameter(name, kind, default=default, annotation=f.type)

    parameters = [parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in positional]
    parameters += [parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in fields if name not in positional]
    parameters.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=f"{config_class.__name__} | None"))
    return inspect.Signature(parameters)
