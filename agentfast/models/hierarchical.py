"""``HierarchicalTransformer``: options (high-level strategies) over actions.

Each step contributes three tokens s_t, o_t, a_t sharing a timestep embedding:
- from s_t (seen: everything before, and s_t) the option to pick, ``option_preds[t]``;
- from o_t (plus the option chosen) the action, ``action_preds[t]``;
- from a_t (plus the action taken) the logit that option o_t ends after step t,
  ``term_preds[t]``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .backbone import SequencePolicy, check_index_input, check_seq_lens, interleave, token_stream, valid_steps
from .config import HierarchicalTransformerConfig
from .kv_cache import KVCache
from .outputs import PolicyOutputs


class HierarchicalTransformer(SequencePolicy):
    """Learns which option (strategy) to follow, how to act under it, and when it ends.

    Args: the fields of ``HierarchicalTransformerConfig``: ``state_dim``, ``action_dim``,
    ``num_options`` (number of options), then those of ``ActionTransformer``; or ``config=``.
    """

    config_class = HierarchicalTransformerConfig
    positional_args = ("state_dim", "action_dim", "num_options", "embed_dim", "num_layers", "num_heads",
                       "hidden_dim", "max_seq_len", "discrete_actions", "dropout", "attn_backend",
                       "gradient_checkpointing")
    tokens_per_step = 3
    step_tokens = ("state", "option", "action")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        embed_dim = self.config.embed_dim
        self.num_options = self.config.num_options
        self.option_embed = nn.Embedding(self.num_options, embed_dim)
        self.option_head = nn.Linear(embed_dim, self.num_options)
        self.action_head = nn.Linear(embed_dim, self.config.action_dim)
        self.term_head = nn.Linear(embed_dim, 1)
        self._init_weights()

    def forward(
        self,
        states: Tensor,
        actions: Tensor,
        options: Tensor,
        seq_lens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predict options, actions and option terminations for every step.

        Args:
            states: ``[B, T, state_dim]`` float.
            actions: ``[B, T, action_dim]`` float or ``[B, T]`` long when discrete.
            options: long ``[B, T]`` in ``[0, num_options)``, the option followed at step t
                (any value at padding).
            seq_lens: int ``[B]`` valid timesteps per row.

        Returns:
            ``(option_preds [B, T, num_options], action_preds [B, T, action_dim],
            term_preds [B, T])``; option_preds are logits, term_preds a logit each.
        """
        batch, num_steps = self._batch_and_steps(states)
        device = states.device
        seq_lens = check_seq_lens(seq_lens, batch, num_steps, device)
        valid = valid_steps(seq_lens, batch, num_steps, device)
        option_tokens = self.option_embed(check_index_input("options", options, (batch, num_steps), self.num_options, valid))
        tokens = interleave(
            self._embed_states(states, batch, num_steps, valid),
            option_tokens,
            self._embed_actions(actions, batch, num_steps, valid),
        )
        hidden = self.backbone(tokens, seq_lens=self._token_seq_lens(seq_lens))
        return (
            self.option_head(token_stream(hidden, 0, 3)),
            self.action_head(token_stream(hidden, 1, 3)),
            self.term_head(token_stream(hidden, 2, 3)).squeeze(-1),
        )

    def forward_batch(self, batch: Mapping[str, Any], *, module: nn.Module | None = None) -> PolicyOutputs:
        option_preds, action_preds, term_preds = (module or self)(
            batch["states"], self.batch_actions(batch), batch["options"], seq_lens=batch["seq_lens"])
        return PolicyOutputs(action_preds=action_preds, option_logits=option_preds, term_logits=term_preds)

    def predict_next(self, cache: KVCache, state: Tensor, prev_action: Tensor | None = None, *,
                     agent_id: Tensor | None = None, agent_mask: Any = None,
                     return_to_go: Tensor | None = None) -> PolicyOutputs:
        """Closes the previous step with its action, then picks the most likely option for
        this state and predicts the action under it."""
        if prev_action is not None:
            self.step_action(cache, prev_action)
        option_logits = self.step_state(cache, state)
        action_pred = self.step_option(cache, option_logits.argmax(-1))
        return PolicyOutputs(action_preds=action_pred, option_logits=option_logits)

    # -- incremental inference: one token at a time, in the order s_t, o_t, a_t -----------

    @torch.no_grad()
    def step_state(self, cache: KVCache, state: Tensor) -> Tensor:
        """Append s_t (``[B, state_dim]``) and return the option logits ``[B, num_options]``.

        Token order in a cache is ``step_state``, ``step_option``, ``step_action``, repeated;
        each output equals ``forward``'s at the same step.
        """
        batch = self._step_batch(state)
        cache = self._expect_phase(cache, batch, 0, "step_state")
        hidden = self.backbone(self._embed_states(state, batch, None)[:, None], cache=cache)[:, -1]
        return self.option_head(hidden)

    @torch.no_grad()
    def step_option(self, cache: KVCache, option: Tensor) -> Tensor:
        """Append o_t (long ``[B]``) and return the action prediction ``[B, action_dim]``."""
        batch = option.shape[0] if isinstance(option, Tensor) and option.dim() == 1 else cache.batch_size
        cache = self._expect_phase(cache, batch, 1, "step_option")
        indices = check_index_input("option", option, (cache.batch_size,), self.num_options, None)
        token = self.option_embed(indices.to(cache.device))[:, None]
        return self.action_head(self.backbone(token, cache=cache)[:, -1])

    @torch.no_grad()
    def step_action(self, cache: KVCache, action: Tensor) -> Tensor:
        """Append a_t (``[B, action_dim]`` float or ``[B]`` long) and return the logit ``[B]``
        that the current option ends after this step."""
        batch = action.shape[0] if isinstance(action, Tensor) and action.dim() >= 1 else cache.batch_size
        cache = self._expect_phase(cache, batch, 2, "step_action")
        token = self._embed_actions(action, cache.batch_size, None, None)[:, None]
        return self.term_head(self.backbone(token, cache=cache)[:, -1]).squeeze(-1)

    def _expect_phase(self, cache: KVCache, batch: int, phase: int, method: str) -> KVCache:
        cache = self._check_cache(cache, batch)
        if cache.token_phase != phase:
            expected = ("step_state", "step_option", "step_action")[cache.token_phase]
            raise ValueError(
                f"{method} called out of order: the cache expects {expected} next "
                "(tokens go step_state, step_option, step_action for every step)"
            )
        return cache
