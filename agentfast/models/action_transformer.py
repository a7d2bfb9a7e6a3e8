"""``ActionTransformer``: a causal policy over interleaved state/action tokens.

Tokens run s_1, a_1, s_2, a_2, ...; the pair of step t shares a timestep embedding. The
prediction for step t is read from s_t, which has seen s_<=t and a_<t. Given
``returns_to_go``, an embedding of the return still to collect is added to each state token,
so the policy can be steered by the return asked for (Decision-Transformer style).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .backbone import (
    SequencePolicy,
    check_float_input,
    check_seq_lens,
    interleave,
    token_stream,
    valid_steps,
    zero_padding,
)
from .config import ActionTransformerConfig
from .kv_cache import KVCache
from .outputs import PolicyOutputs


class ActionTransformer(SequencePolicy):
    """Predicts the next action (and the value) of an agent from its history.

    Args: the fields of ``ActionTransformerConfig`` (``state_dim`` and ``action_dim`` first,
    as in the original model API; see ``agentfast.models.config`` for each one's meaning), or
    ``config=``. With ``condition_on_returns`` its batches feed the returns-to-go, and
    inference asks for a target return.
    """

    config_class = ActionTransformerConfig
    positional_args = ("state_dim", "action_dim", "embed_dim", "num_layers", "num_heads", "hidden_dim",
                       "max_seq_len", "discrete_actions", "dropout", "attn_backend", "gradient_checkpointing")
    tokens_per_step = 2
    uses_returns = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.return_embed = nn.Linear(1, self.embed_dim)
        self._add_action_and_value_heads()
        self._init_weights()

    def forward(
        self,
        states: Tensor,
        actions: Tensor,
        seq_lens: Tensor | None = None,
        returns_to_go: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict actions and values for every step.

        Args:
            states: ``[B, T, state_dim]`` float.
            actions: ``[B, T, action_dim]`` float, or ``[B, T]`` long when discrete. The
                action of step t is only seen by predictions of later steps.
            seq_lens: int ``[B]`` valid timesteps per row; later steps are padding and never
                change the outputs at valid steps (their own outputs are meaningless).
            returns_to_go: ``[B, T]`` (or ``[B, T, 1]``) return still to collect from step t.

        Returns:
            ``(action_preds [B, T, action_dim], values [B, T])``.
        """
        batch, num_steps = self._batch_and_steps(states)
        seq_lens = check_seq_lens(seq_lens, batch, num_steps, states.device)
        valid = valid_steps(seq_lens, batch, num_steps, states.device)
        state_tokens = self._state_tokens(states, returns_to_go, batch, num_steps, valid)
        action_tokens = self._embed_actions(actions, batch, num_steps, valid)
        hidden = self.backbone(interleave(state_tokens, action_tokens), seq_lens=self._token_seq_lens(seq_lens))
        return self._heads(token_stream(hidden, 0, self.tokens_per_step))

    @torch.no_grad()
    def step(
        self,
        cache: KVCache,
        state: Tensor,
        prev_action: Tensor | None = None,
        return_to_go: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One step of incremental inference with a KV cache.

        Appends the token of ``prev_action`` (the action taken at the previous step; None at
        the first step) and then the new state's token, and returns the predictions at that
        state, equal to ``forward``'s at the same step.

        Args:
            cache: from ``model.new_cache(batch_size)``.
            state: ``[B, state_dim]``.
            prev_action: ``[B, action_dim]`` float or ``[B]`` long; None only at the first step.
            return_to_go: ``[B]`` (or ``[B, 1]``) when the model is conditioned on returns.

        Returns:
            ``(action_pred [B, action_dim], value [B])``.
        """
        batch = self._step_batch(state)
        cache = self._check_cache(cache, batch)
        tokens = [self._state_tokens(state, return_to_go, batch, None)]
        if cache.length == 0:
            if prev_action is not None:
                raise ValueError("prev_action must be None at the first step (the cache is empty)")
        else:
            if prev_action is None:
                raise ValueError(
                    "prev_action is required after the first step: it is the action taken at the "
                    "previous step and becomes its action token"
                )
            tokens.insert(0, self._embed_actions(prev_action, batch, None, None))
        hidden = self.backbone(torch.stack(tokens, dim=1), cache=cache)
        action_pred, value = self._heads(hidden[:, -1])
        return action_pred, value

    def forward_batch(self, batch: Mapping[str, Any], *, module: nn.Module | None = None) -> PolicyOutputs:
        returns = batch["returns_to_go"] if self.config.condition_on_returns else None
        action_preds, values = (module or self)(batch["states"], self.batch_actions(batch),
                                                seq_lens=batch["seq_lens"], returns_to_go=returns)
        return PolicyOutputs(action_preds=action_preds, values=values)

    def predict_next(self, cache: KVCache, state: Tensor, prev_action: Tensor | None = None, *,
                     agent_id: Tensor | None = None, agent_mask: Any = None,
                     return_to_go: Tensor | None = None) -> PolicyOutputs:
        action_pred, value = self.step(cache, state, prev_action=prev_action, return_to_go=return_to_go)
        return PolicyOutputs(action_preds=action_pred, values=value)

    def _state_tokens(self, states: Tensor, returns_to_go: Any, batch: int, num_steps: int | None,
                      valid: Tensor | None = None) -> Tensor:
        tokens = self._embed_states(states, batch, num_steps, valid)
        if returns_to_go is not None:
            lead = (batch, num_steps) if num_steps is not None else (batch,)
            name = "returns_to_go" if num_steps is not None else "return_to_go"
            if isinstance(returns_to_go, Tensor) and returns_to_go.dim() == len(lead) + 1:
                check_float_input(name, returns_to_go, (*lead, 1))
                returns_to_go = returns_to_go.squeeze(-1)
            check_float_input(name, returns_to_go, lead)
            tokens = tokens + self.return_embed(zero_padding(returns_to_go.to(tokens.dtype), valid).unsqueeze(-1))
        return tokens

    def _heads(self, state_hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.action_head(state_hidden), self.value_head(state_hidden).squeeze(-1)
