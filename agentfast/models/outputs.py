"""What a policy produced, named the same way for every policy."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PolicyOutputs:
    """A policy's predictions for every step of a batch (``[B, T, ...]``) or for one turn
    (``[B, ...]``); None where the policy has no such head.

    action_preds: predicted action embeddings, or logits over the known actions when discrete.
    values: the estimated return from each step. option_logits / term_logits: which option
    to follow, and whether the current option ends after the step (hierarchical policies).
    hidden_states: the final hidden states at the state tokens.
    """

    action_preds: Tensor
    values: Tensor | None = None
    option_logits: Tensor | None = None
    term_logits: Tensor | None = None
    hidden_states: Tensor | None = None
