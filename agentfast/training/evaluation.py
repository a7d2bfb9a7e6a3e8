"""Held-out evaluation: action retrieval, cosine, option accuracy, termination F1, value
error, for trained policies and two baselines, in one table.

Retrieval: a continuous prediction is compared by cosine similarity with every action in
the bank (the embeddings of all known action texts); a discrete one ranks the bank by
its logits. top-k accuracy counts steps whose true action is among the k best. The
baselines answer the same question without a sequence model:

* majority: always the most frequent training actions (and option, and mean return);
* nearest neighbour: the action (option, return) of the training step whose state
  embedding is most similar to the held-out state; its top-k takes the distinct actions
  of the nearest training states in order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.dataset import collate_episodes
from .losses import batch_termination_labels, target_mask
from .modeling import move_batch

TOP_K = 5
METRIC_COLUMNS = (
    ("top1", "top-1"),
    ("top5", "top-5"),
    ("cosine", "cosine"),
    ("option_acc", "option acc"),
    ("term_f1", "term F1"),
    ("value_mae", "value MAE"),
)


@dataclass
class StepRecords:
    """One row per counted step of a data set (padding and duplicate window steps dropped)."""

    states: Tensor
    actions: Tensor
    action_ids: Tensor
    agent_ids: Tensor
    options: Tensor
    has_options: Tensor
    returns_to_go: Tensor
    has_rewards: Tensor
    term_labels: Tensor
    task_types: list[str]

    def __len__(self) -> int:
        return int(self.action_ids.shape[0])


@dataclass
class StepPredictions:
    """Model outputs aligned with StepRecords rows (None where the model has no such head)."""

    actions: Tensor  # [N, Da] predicted embeddings, or [N, K] logits when discrete
    values: Tensor | None = None
    option_logits: Tensor | None = None
    term_logits: Tensor | None = None


def _flatten(batch: dict[str, Any], mask: Tensor) -> dict[str, Any]:
    rows = {
        "states": batch["states"][mask],
        "actions": batch["actions"][mask],
        "action_ids": batch["action_ids"][mask],
        "agent_ids": batch["agent_ids"][mask],
        "options": batch["options"][mask],
        "has_options": batch["has_options"].bool().unsqueeze(1).expand_as(mask)[mask],
        "returns_to_go": batch["returns_to_go"][mask],
        "has_rewards": batch["has_rewards"].bool().unsqueeze(1).expand_as(mask)[mask],
        "term_labels": batch_termination_labels(batch)[mask],
    }
    task_types = [batch["task_types"][b] for b in mask.nonzero()[:, 0].tolist()]
    return {**rows, "task_types": task_types}


def _concat(parts: list[dict[str, Any]]) -> StepRecords:
    fields = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "task_types"}
    return StepRecords(**fields, task_types=[t for p in parts for t in p["task_types"]])


def _loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_episodes,
                      generator=torch.Generator().manual_seed(0))


def collect_steps(dataset: Dataset, batch_size: int = 64) -> StepRecords:
    """All counted steps of ``dataset`` as flat rows (for baselines)."""
    parts = [_flatten(batch, target_mask(batch)) for batch in _loader(dataset, batch_size)]
    return _concat(parts)


@torch.no_grad()
def predict_steps(model: nn.Module, dataset: Dataset, *, device: str | torch.device = "cpu",
                  batch_size: int = 64) -> tuple[StepRecords, StepPredictions]:
    """Run the policy ``model`` over ``dataset`` (full-sequence forward, eval mode, each
    batch read by the policy's own ``forward_batch``) and flatten."""
    model.eval()
    parts, outputs = [], {"actions": [], "values": [], "option_logits": [], "term_logits": []}
    for batch in _loader(dataset, batch_size):
        mask = target_mask(batch)
        parts.append(_flatten(batch, mask))
        out = model.forward_batch(move_batch(batch, device))
        mask = mask.to(device)
        outputs["actions"].append(out.action_preds[mask].float().cpu())
        for name, tensor in (("values", out.values), ("option_logits", out.option_logits),
                             ("term_logits", out.term_logits)):
            if tensor is not None:
                outputs[name].append(tensor[mask].float().cpu())
    records = _concat(parts)
    cat = {k: (torch.cat(v) if v else None) for k, v in outputs.items()}
    return records, StepPredictions(**cat)


# ----------------------------------------------------------------------------- metrics

def rank_bank(predictions: Tensor, bank: Tensor, *, discrete: bool, k: int = TOP_K) -> Tensor:
    """Ids of the ``k`` best bank actions per row: by cosine, or by logit when discrete."""
    if discrete:
        scores = predictions
    else:
        scores = F.normalize(predictions.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).T
    return scores.topk(min(k, scores.shape[-1]), dim=-1).indices


def retrieval_metrics(top_ids: Tensor, true_ids: Tensor) -> dict[str, float]:
    hits = top_ids == true_ids.unsqueeze(1)
    return {"top1": float(hits[:, :1].any(1).float().mean()),
            "top5": float(hits[:, :TOP_K].any(1).float().mean())}


def binary_f1(predicted: Tensor, labels: Tensor) -> float:
    predicted, labels = predicted.bool(), labels.bool()
    true_pos = float((predicted & labels).sum())
    denom = float(predicted.sum() + labels.sum())
    return 2.0 * true_pos / denom if denom else 1.0


def binary_precision_recall(predicted: Tensor, labels: Tensor) -> tuple[float | None, float | None]:
    """Precision and recall of boolean predictions; None where undefined (nothing was
    predicted positive, or nothing is positive)."""
    predicted, labels = predicted.bool(), labels.bool()
    true_pos = float((predicted & labels).sum())
    predicted_pos, actual_pos = float(predicted.sum()), float(labels.sum())
    return (true_pos / predicted_pos if predicted_pos else None,
            true_pos / actual_pos if actual_pos else None)


def confusion_matrix(truth: Tensor, predicted: Tensor, size: int) -> list[list[int]]:
    """Counts ``[size, size]``: row = the true class, column = the predicted one."""
    flat = truth.long() * size + predicted.long()
    return torch.bincount(flat, minlength=size * size).reshape(size, size).tolist()


def _mean_cosine(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def score(records: StepRecords, top_ids: Tensor, *, cosine_to: Tensor,
          option_pred: Tensor | None = None, term_pred: Tensor | None = None,
          value_pred: Tensor | None = None) -> dict[str, Any]:
    """Every metric for one predictor; heads it lacks are reported as None."""
    metrics: dict[str, Any] = retrieval_metrics(top_ids, records.action_ids)
    metrics["cosine"] = _mean_cosine(cosine_to, records.actions)
    metrics["steps"] = len(records)
    opt = records.has_options
    metrics["option_acc"] = (float((option_pred[opt] == records.options[opt]).float().mean())
                             if option_pred is not None and bool(opt.any()) else None)
    metrics["term_f1"] = (binary_f1(term_pred[opt], records.term_labels[opt])
                          if term_pred is not None and bool(opt.any()) else None)
    metrics["term_precision"], metrics["term_recall"] = (
        binary_precision_recall(term_pred[opt], records.term_labels[opt])
        if term_pred is not None and bool(opt.any()) else (None, None))
    metrics["option_confusion"] = (
        confusion_matrix(records.options[opt], option_pred[opt],
                         1 + max(int(records.options[opt].max()), int(option_pred[opt].max())))
        if option_pred is not None and bool(opt.any()) else None)
    rew = records.has_rewards
    metrics["value_mae"] = (float((value_pred[rew] - records.returns_to_go[rew]).abs().mean())
                            if value_pred is not None and bool(rew.any()) else None)
    metrics["top1_by_task_type"] = _grouped_top1(top_ids, records.action_ids, records.task_types)
    metrics["steps_by_task_type"] = dict(sorted(Counter(map(str, records.task_types)).items()))
    return metrics


def _grouped_top1(top_ids: Tensor, true_ids: Tensor, groups: Sequence[Any]) -> dict[str, float]:
    hits = (top_ids[:, 0] == true_ids).float()
    result = {}
    for group in sorted(set(map(str, groups))):
        rows = torch.tensor([str(g) == group for g in groups])
        result[group] = round(float(hits[rows].mean()), 4)
    return result


def model_metrics(records: StepRecords, predictions: StepPredictions, bank: Tensor, *,
                  discrete: bool, agent_labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of a trained policy's predictions."""
    top_ids = rank_bank(predictions.actions, bank, discrete=discrete)
    cosine_to = bank[top_ids[:, 0]] if discrete else predictions.actions
    metrics = score(
        records, top_ids, cosine_to=cosine_to,
        option_pred=None if predictions.option_logits is None else predictions.option_logits.argmax(-1),
        term_pred=None if predictions.term_logits is None else predictions.term_logits > 0,
        value_pred=predictions.values,
    )
    if agent_labels is not None:
        groups = [agent_labels[i] if i < len(agent_labels) else str(i)
                  for i in records.agent_ids.tolist()]
        metrics["top1_by_agent"] = _grouped_top1(top_ids, records.action_ids, groups)
    return metrics


def value_pairs(records: StepRecords, predictions: StepPredictions) -> tuple[list[float], list[float]] | None:
    """(predicted values, logged returns-to-go) at the steps of episodes with rewards; None
    without a value head or rewards."""
    rewarded = records.has_rewards
    if predictions.values is None or not bool(rewarded.any()):
        return None
    return predictions.values[rewarded].tolist(), records.returns_to_go[rewarded].tolist()


def majority_baseline(train: StepRecords, held_out: StepRecords, bank: Tensor) -> dict[str, Any]:
    """Always predict the training set's most frequent actions / option / termination / mean return."""
    counts = Counter(train.action_ids.tolist())
    ranked = [a for a, _ in counts.most_common(TOP_K)]
    top_ids = torch.tensor(ranked, dtype=torch.long).expand(len(held_out), -1)
    n = len(held_out)
    option_pred = term_pred = None
    if bool(train.has_options.any()):
        option = Counter(train.options[train.has_options].tolist()).most_common(1)[0][0]
        option_pred = torch.full((n,), option, dtype=torch.long)
        term = Counter(train.term_labels[train.has_options].tolist()).most_common(1)[0][0]
        term_pred = torch.full((n,), bool(term))
    value_pred = None
    if bool(train.has_rewards.any()):
        value_pred = torch.full((n,), float(train.returns_to_go[train.has_rewards].mean()))
    return score(held_out, top_ids, cosine_to=bank[top_ids[:, 0]], option_pred=option_pred,
                 term_pred=term_pred, value_pred=value_pred)


def nearest_neighbour_baseline(train: StepRecords, held_out: StepRecords, bank: Tensor,
                               chunk: int = 1024) -> dict[str, Any]:
    """Copy the training step whose state embedding is most similar (cosine)."""
    train_states = F.normalize(train.states.float(), dim=-1)
    neighbours = min(len(train), 64)
    order_rows = []
    for start in range(0, len(held_out), chunk):
        query = F.normalize(held_out.states[start:start + chunk].float(), dim=-1)
        order_rows.append((query @ train_states.T).topk(neighbours, dim=-1).indices)
    order = torch.cat(order_rows) if order_rows else torch.empty(0, neighbours, dtype=torch.long)
    top_ids = torch.stack([_distinct_actions(train.action_ids[row]) for row in order]) \
        if len(order) else torch.empty(0, TOP_K, dtype=torch.long)
    nearest = order[:, 0] if len(order) else torch.empty(0, dtype=torch.long)
    option_pred = train.options[nearest] if bool(train.has_options.any()) else None
    term_pred = train.term_labels[nearest].bool() if bool(train.has_options.any()) else None
    value_pred = train.returns_to_go[nearest] if bool(train.has_rewards.any()) else None
    return score(held_out, top_ids, cosine_to=bank[top_ids[:, 0]], option_pred=option_pred,
                 term_pred=term_pred, value_pred=value_pred)


def _distinct_actions(action_ids: Tensor) -> Tensor:
    """The first TOP_K distinct ids in order, padded with the last one found."""
    seen: list[int] = []
    for action in action_ids.tolist():
        if action not in seen:
            seen.append(action)
            if len(seen) == TOP_K:
                break
    seen += [seen[-1]] * (TOP_K - len(seen))
    return torch.tensor(seen, dtype=torch.long)


# ----------------------------------------------------------------------------- report

@dataclass
class EvaluationReport:
    """Rows of (name, metrics) plus facts about the held-out set."""

    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    held_out_task_types: list[str] = field(default_factory=list)
    held_out_steps: int = 0
    seen_action_fraction: float = 0.0
    bank_size: int = 0
    baselines: list[str] = field(default_factory=list)  # names of the rows that are baselines
    option_labels: list[str] = field(default_factory=list)  # option ids' names (confusion matrices)
    # Per policy with a value head: (predicted values, logged returns-to-go) of the held-out
    # steps with rewards; drawn by `evaluate --plots`, left out of to_dict (one pair a step).
    value_pairs: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    def add(self, name: str, metrics: dict[str, Any], *, baseline: bool = False,
            value_pairs: tuple[list[float], list[float]] | None = None) -> None:
        if any(name == existing for existing, _ in self.rows):
            raise ValueError(f"the report already has a row named {name!r}")
        self.rows.append((name, metrics))
        if baseline:
            self.baselines.append(name)
        if value_pairs is not None:
            self.value_pairs[name] = value_pairs

    def table(self) -> str:
        return format_table(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"held_out_task_types": self.held_out_task_types,
                "held_out_steps": self.held_out_steps,
                "seen_action_fraction": self.seen_action_fraction,
                "bank_size": self.bank_size, "baselines": list(self.baselines),
                "option_labels": list(self.option_labels),
                "rows": [{"name": n, **m} for n, m in self.rows]}


def format_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A fixed-width text table, one row per predictor; '-' where a metric does not apply."""
    name_width = max([len("predictor")] + [len(name) for name, _ in rows])
    header = f"{'predictor':<{name_width}}  " + "  ".join(f"{title:>10}" for _, title in METRIC_COLUMNS)
    lines = [header, "-" * len(header)]
    for name, metrics in rows:
        cells = []
        for key, _ in METRIC_COLUMNS:
            value = metrics.get(key)
            cells.append(f"{'-':>10}" if value is None else f"{value:>10.3f}")
        lines.append(f"{name:<{name_width}}  " + "  ".join(cells))
    return "\n".join(lines)


def seen_action_fraction(train: StepRecords, held_out: StepRecords) -> float:
    """Share of held-out steps whose true action occurs in training (a ceiling for copying)."""
    seen = set(train.action_ids.tolist())
    if not len(held_out):
        return 0.0
    return sum(a in seen for a in held_out.action_ids.tolist()) / len(held_out)
