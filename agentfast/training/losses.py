"""Losses for the three training approaches, all masked to valid (non-padding) steps.

Every function returns a scalar that is connected to its prediction tensor even when no
position counts (then it is ``0 * pred.sum()``), so distributed training never sees a
parameter without a gradient because one batch happened to lack rewards or options.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .._lazy import moved_names
from ..models.outputs import PolicyOutputs

# What a model produced is the models' own type now.
__getattr__ = moved_names(__name__, {"ModelOutputs": "agentfast.models.outputs:PolicyOutputs"})

IGNORE_INDEX = -100


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is true (0 when none is)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def embedding_loss(pred: Tensor, target: Tensor, mask: Tensor, mse_weight: float = 1.0) -> Tensor:
    """Cosine distance plus ``mse_weight`` times mean squared error, per valid step.

    Cosine makes the direction right (what nearest-neighbour retrieval uses); MSE keeps the
    scale anchored so the prediction does not drift to arbitrary norms.
    """
    pred = pred.float()
    target = target.float()
    cosine = F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    mse = (pred - target).pow(2).mean(dim=-1)
    return masked_mean((1.0 - cosine) + mse_weight * mse, mask)


def discrete_action_loss(logits: Tensor, action_ids: Tensor) -> Tensor:
    """Cross-entropy over the action vocabulary; ``-100`` marks steps to ignore."""
    flat_ids = action_ids.reshape(-1)
    if not bool((flat_ids != IGNORE_INDEX).any()):
        return 0.0 * logits.sum()
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), flat_ids,
                           ignore_index=IGNORE_INDEX)


def value_loss(values: Tensor, returns_to_go: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error of the value head against the discounted returns-to-go."""
    return masked_mean((values.float() - returns_to_go.float()).pow(2), mask)


def option_loss(option_logits: Tensor, options: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the predicted option at each valid step that has an option label."""
    per_step = F.cross_entropy(option_logits.float().transpose(1, 2), options.long(),
                               reduction="none")
    return masked_mean(per_step, mask)


def termination_labels(options: Tensor, seq_lens: Tensor) -> Tensor:
    """1.0 where the option active at step t ends after t, else 0.0, for rows that each
    hold a whole episode.

    An option ends when the next step's option differs, and the last valid step of a
    sequence always ends its option. Positions at or beyond ``seq_lens`` are 0. A window
    cut from a longer episode does not know whether its last step ends the option: use
    ``batch_termination_labels``, which reads the per-episode labels of the batch.
    """
    batch, steps = options.shape
    labels = torch.zeros(batch, steps, dtype=torch.float32, device=options.device)
    if steps > 1:
        labels[:, :-1] = (options[:, 1:] != options[:, :-1]).float()
    positions = torch.arange(steps, device=options.device).unsqueeze(0)
    lens = seq_lens.to(options.device).unsqueeze(1)
    labels = torch.where(positions == lens - 1, torch.ones_like(labels), labels)
    return labels * (positions < lens).float()


def batch_termination_labels(batch: dict) -> Tensor:
    """The batch's ``term_labels`` (computed per episode, before windowing).

    A batch without them (built by hand) is taken to hold one whole episode per row.
    """
    if "term_labels" in batch:
        return batch["term_labels"].float()
    return termination_labels(batch["options"], batch["seq_lens"])


def termination_loss(term_logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy of the termination logit against ``batch_termination_labels``."""
    per_step = F.binary_cross_entropy_with_logits(term_logits.float(), labels.float(),
                                                  reduction="none")
    return masked_mean(per_step, mask)


def per_step_action_loss(action_preds: Tensor, batch: dict, discrete: bool,
                         mse_weight: float = 1.0) -> Tensor:
    """The action loss of every step, ``[B, T]`` (not masked; pair it with ``target_mask``).

    Used to report the loss per agent of a multi-agent log.
    """
    if discrete:
        ids = batch["action_ids"].clamp_min(0)
        return F.cross_entropy(action_preds.float().transpose(1, 2), ids, reduction="none")
    pred, target = action_preds.float(), batch["actions"].float()
    cosine = F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    return (1.0 - cosine) + mse_weight * (pred - target).pow(2).mean(dim=-1)


@dataclass
class LossWeights:
    mse: float = 1.0
    value: float = 0.25
    option: float = 1.0
    termination: float = 0.5


@dataclass
class LossBreakdown:
    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)

    def as_floats(self) -> dict[str, float]:
        values = {"loss": float(self.total.detach())}
        values.update({name: float(v.detach()) for name, v in self.parts.items()})
        return values


def target_mask(batch: dict) -> Tensor:
    """Steps that count: valid, and (with overlapping windows) in their first window only."""
    mask = batch["valid_mask"].bool()
    if "target_mask" in batch:
        mask = mask & batch["target_mask"].bool()
    return mask


def action_loss(outputs: PolicyOutputs, batch: dict, discrete: bool, mse_weight: float) -> Tensor:
    mask = target_mask(batch)
    if discrete:
        ids = batch["action_ids"].masked_fill(~mask, IGNORE_INDEX)
        return discrete_action_loss(outputs.action_preds, ids)
    return embedding_loss(outputs.action_preds, batch["actions"], mask, mse_weight)


def compute_losses(outputs: PolicyOutputs, batch: dict, *, discrete: bool,
                   weights: LossWeights) -> LossBreakdown:
    """The training objective for any of the three models.

    action loss (always) + value loss (where the model has a value head; only steps of
    episodes with rewards count) + option cross-entropy and termination BCE (hierarchical;
    only steps of episodes with option labels count).
    """
    valid = target_mask(batch)
    parts = {"action_loss": action_loss(outputs, batch, discrete, weights.mse)}
    total = parts["action_loss"]
    if outputs.values is not None:
        reward_mask = valid & batch["has_rewards"].bool().unsqueeze(1)
        parts["value_loss"] = value_loss(outputs.values, batch["returns_to_go"], reward_mask)
        total = total + weights.value * parts["value_loss"]
    if outputs.option_logits is not None:
        option_mask = valid & batch["has_options"].bool().unsqueeze(1)
        parts["option_loss"] = option_loss(outputs.option_logits, batch["options"], option_mask)
        labels = batch_termination_labels(batch)
        parts["termination_loss"] = termination_loss(outputs.term_logits, labels, option_mask)
        total = total + weights.option * parts["option_loss"]
        total = total + weights.termination * parts["termination_loss"]
    return LossBreakdown(total=total, parts=parts)
