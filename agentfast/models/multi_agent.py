"""``MultiAgentTransformer``: one causal policy over the interleaved log of several agents.

Step t is taken by agent ``agent_ids[b, t]``; its tokens s_t, a_t carry that agent's
embedding and belong to that agent for attention. ``agent_mask`` (bool ``[A, A]`` or
``[B, A, A]``, row = the attending agent) says which agents' tokens each agent may attend,
so an agent is never influenced by an agent it cannot see. ``visibility_preset`` builds the
common patterns.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..visibility import FROM_DATA, as_visibility, setting_visibility
from .backbone import (
    SequencePolicy, _on_cpu_or_assert, check_index_input, check_seq_lens, interleave, token_stream, valid_steps,
)
from .config import MultiAgentTransformerConfig
from .kv_cache import KVCache
from .outputs import PolicyOutputs


class MultiAgentTransformer(SequencePolicy):
    """A policy for logs in which several agents act in turn.

    Args: the fields of ``MultiAgentTransformerConfig``: those of ``ActionTransformer``
    plus ``max_num_agents`` (size of the agent embedding table; agent ids lie in
    ``[0, max_num_agents)``, at most 64) and ``visibility`` (what its training batches
    see: each episode's own visibility, or a preset), or ``config=``.
    """

    config_class = MultiAgentTransformerConfig
    positional_args = ("state_dim", "action_dim", "embed_dim", "num_layers", "num_heads", "hidden_dim",
                       "max_seq_len", "max_num_agents", "discrete_actions", "dropout", "attn_backend",
                       "gradient_checkpointing")
    tokens_per_step = 2
    uses_agents = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_num_agents = self.config.max_num_agents
        self.agent_embed = nn.Embedding(self.max_num_agents, self.embed_dim)
        self._add_action_and_value_heads()
        self._init_weights()

    def forward(
        self,
        states: Tensor,
        agent_ids: Tensor,
        actions: Tensor,
        seq_lens: Tensor | None = None,
        agent_mask: Tensor | str | Sequence[Sequence[bool]] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predict every step's action and value from the steps its agent may see.

        Args:
            states: ``[B, T, state_dim]`` float.
            agent_ids: long ``[B, T]``, the agent acting at step t (any value at padding).
            actions: ``[B, T, action_dim]`` float or ``[B, T]`` long when discrete.
            seq_lens: int ``[B]`` valid timesteps per row.
            agent_mask: visibility bool ``[A, A]`` or ``[B, A, A]`` (row = attending agent),
                a preset name (see ``visibility_preset``) or a list of lists;
                None = everyone sees everyone.

        Returns:
            ``(action_preds [B, T, action_dim], values [B, T], hidden_states [B, T, embed_dim])``;
            hidden_states are the final hidden states at the state tokens.
        """
        batch, num_steps = self._batch_and_steps(states)
        device = states.device
        seq_lens = check_seq_lens(seq_lens, batch, num_steps, device)
        valid = valid_steps(seq_lens, batch, num_steps, device)
        agent_ids = check_index_input("agent_ids", agent_ids, (batch, num_steps), self.max_num_agents, valid)
        visibility = self._visibility(agent_mask, batch, device, agent_ids)
        agent_tokens = self.agent_embed(agent_ids)
        state_tokens = self._embed_states(states, batch, num_steps, valid) + agent_tokens
        action_tokens = self._embed_actions(actions, batch, num_steps, valid) + agent_tokens
        token_agents = agent_ids.repeat_interleave(self.tokens_per_step, dim=1) if visibility is not None else None
        hidden = self.backbone(
            interleave(state_tokens, action_tokens), seq_lens=self._token_seq_lens(seq_lens),
            agent_ids=token_agents, agent_visibility=visibility,
        )
        state_hidden = token_stream(hidden, 0, self.tokens_per_step)
        action_preds, values = self._heads(state_hidden)
        return action_preds, values, state_hidden

    @torch.no_grad()
    def step(
        self,
        cache: KVCache,
        state: Tensor,
        agent_id: Tensor,
        prev_action: Tensor | None = None,
        agent_mask: Tensor | str | Sequence[Sequence[bool]] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step of incremental inference with a KV cache.

        Appends the token of ``prev_action`` (taken at the previous step by that step's agent,
        which the cache remembers; None at the first step), then the token of ``state``
        acted on by ``agent_id``. Pass the same ``agent_mask`` at every step.

        Args:
            cache: from ``model.new_cache(batch_size)``.
            state: ``[B, state_dim]``. agent_id: long ``[B]``.
            prev_action: ``[B, action_dim]`` float or ``[B]`` long; None only at the first step.
            agent_mask: as in ``forward``.

        Returns:
            ``(action_pred [B, action_dim], value [B], hidden [B, embed_dim])``, equal to
            ``forward``'s outputs at this step.
        """
        batch = self._step_batch(state)
        cache = self._check_cache(cache, batch)
        agent_id = check_index_input("agent_id", agent_id, (batch,), self.max_num_agents, None).to(state.device)
        visibility = self._visibility(agent_mask, batch, state.device, agent_id[:, None])
        tokens = [self._embed_states(state, batch, None) + self.agent_embed(agent_id)]
        token_agents = [agent_id]
        if cache.length == 0:
            if prev_action is not None:
                raise ValueError("prev_action must be None at the first step (the cache is empty)")
        else:
            if prev_action is None:
                raise ValueError("prev_action is required after the first step (the previous step's action)")
            prev_agent = cache.agent_ids[:, cache.length - 1]
            tokens.insert(0, self._embed_actions(prev_action, batch, None, None) + self.agent_embed(prev_agent))
            token_agents.insert(0, prev_agent)
        hidden = self.backbone(
            torch.stack(tokens, dim=1), agent_ids=torch.stack(token_agents, dim=1),
            agent_visibility=visibility, cache=cache,
        )[:, -1]
        action_pred, value = self._heads(hidden)
        return action_pred, value, hidden

    def forward_batch(self, batch: Mapping[str, Any], *, module: nn.Module | None = None) -> PolicyOutputs:
        """Each batch sees with the policy's ``visibility`` setting (``batch_visibility``)."""
        action_preds, values, hidden = (module or self)(batch["states"], batch["agent_ids"], self.batch_actions(batch),
                                                        seq_lens=batch["seq_lens"], agent_mask=self.batch_visibility(batch))
        return PolicyOutputs(action_preds=action_preds, values=values, hidden_states=hidden)

    def batch_visibility(self, batch: Mapping[str, Any]) -> Tensor | None:
        """The visibility ``forward_batch`` uses: with the ``data`` setting the batch's own
        ``agent_mask`` (from the episodes' metadata), else the preset's matrix (None: full)."""
        if self.config.visibility == FROM_DATA:
            return batch.get("agent_mask")
        return setting_visibility(self.config.visibility, self.max_num_agents, batch["states"].device)

    def predict_next(self, cache: KVCache, state: Tensor, prev_action: Tensor | None = None, *,
                     agent_id: Tensor | None = None, agent_mask: Any = None,
                     return_to_go: Tensor | None = None) -> PolicyOutputs:
        if agent_id is None:
            raise ValueError("a multi-agent policy needs the acting agent_id of every turn")
        action_pred, value, hidden = self.step(cache, state, agent_id, prev_action=prev_action, agent_mask=agent_mask)
        return PolicyOutputs(action_preds=action_pred, values=value, hidden_states=hidden)

    def _visibility(self, agent_mask: Any, batch: int, device: torch.device, agent_ids: Tensor) -> Tensor | None:
        """``agent_mask`` as bool ``[A, A]`` / ``[B, A, A]`` on ``device``, checked against the ids."""
        visibility = as_visibility(agent_mask, self.max_num_agents, batch=batch, device=device)
        if visibility is not None:
            num_agents = visibility.shape[-1]
            _on_cpu_or_assert(
                agent_ids >= num_agents,
                lambda: f"agent_ids go up to {int(agent_ids.max())} but agent_mask only covers {num_agents} agents",
            )
        return visibility

    def _heads(self, state_hidden: Tensor) -> tuple[Tensor, Tensor]:
        return self.action_head(state_hidden), self.value_head(state_hidden).squeeze(-1)
