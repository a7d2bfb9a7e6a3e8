"""Training curves from a run's ``train_log.jsonl``.

The trainer appends one JSON record per line: ``{"event": "train", "step", "lr", "loss",
"action_loss", ..., "grad_norm", "timesteps_per_s"}`` every ``log_every`` steps and
``{"event": "eval", "step", "val_loss", ...}`` at each validation. ``read_training_log``
turns them into one series per metric; ``draw_training_curves`` draws the losses (per
head), the validation metrics, the learning rate, the gradient norm and the throughput.

A resumed run goes on from its last checkpoint (a ``resume`` record names its step), and a
log may hold an earlier run that a new one restarted: a resume drops the records past its
step, and a train record at step s every record of step s or later logged before it, so
each series holds the steps of the run that went on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .figures import new_figure, save_figure, slug, wrapped_title

TRAIN_PANELS = {"lr": "learning rate", "grad_norm": "gradient norm (before clipping)",
                "timesteps_per_s": "throughput (timesteps/s, mean since start)"}
NOT_CURVES = {"event", "time", "step", "epoch", "improved"}


@dataclass
class Series:
    """``values[i]`` was logged at ``steps[i]``; steps increase."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[Any]]:
        return {"steps": list(self.steps), "values": list(self.values)}


@dataclass
class TrainingCurves:
    """Per-metric series of a training log: ``train`` (loss, action_loss, ..., lr,
    grad_norm, timesteps_per_s) and ``validation`` (val_loss, val_action_loss, ...)."""

    train: dict[str, Series]
    validation: dict[str, Series]
    path: Path

    @property
    def losses(self) -> dict[str, Series]:
        return {name: s for name, s in self.train.items() if name not in TRAIN_PANELS}

    def to_dict(self) -> dict[str, Any]:
        return {"log": str(self.path),
                "train": {name: s.to_dict() for name, s in self.train.items()},
                "validation": {name: s.to_dict() for name, s in self.validation.items()}}


def read_training_log(path: str | os.PathLike[str]) -> TrainingCurves:
    """The series of ``path`` (a ``train_log.jsonl``); a line that is not a JSON object is
    an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            event = record.get("event")
            if event not in ("train", "eval", "resume"):
                continue
            if not isinstance(record.get("step"), int):
                raise ValueError(f"{path}:{number}: a {event} record without an integer step")
            if event == "resume":  # what the interrupted run logged past its checkpoint is gone
                train = [r for r in train if r["step"] <= record["step"]]
                evals = [r for r in evals if r["step"] <= record["step"]]
            elif event == "train":  # a restart supersedes what it repeats
                train = [r for r in train if r["step"] < record["step"]]
                evals = [r for r in evals if r["step"] < record["step"]]
                train.append(record)
            else:
                evals = [r for r in evals if r["step"] < record["step"]]
                evals.append(record)
    return TrainingCurves(train=_series(train), validation=_series(evals, exclude={"best_val_loss"}),
                          path=path)


def _series(records: list[dict[str, Any]], exclude: set[str] = frozenset()) -> dict[str, Series]:
    series: dict[str, Series] = {}
    for record in records:
        for name, value in record.items():
            if name in NOT_CURVES or name in exclude or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                entry = series.setdefault(name, Series())
                entry.steps.append(record["step"])
                entry.values.append(float(value))
    return series


def draw_training_curves(log: str | os.PathLike[str] | TrainingCurves, path: str | os.PathLike[str],
                         *, title: str | None = None) -> Any:
    """Draw a run's curves to ``path`` (PNG; the plotted series as JSON beside it): the
    training losses per head, the validation metrics, the learning rate, the gradient norm
    and the throughput, against the optimiser step. Returns the matplotlib Figure."""
    curves = log if isinstance(log, TrainingCurves) else read_training_log(log)
    if not curves.train and not curves.validation:
        raise ValueError(f"{curves.path} holds no train or eval records to draw")
    figure = new_figure(13.0, 7.5)
    axes = figure.subplot_mosaic([["losses"] * 3 + ["validation"] * 3,
                                  ["lr"] * 2 + ["grad_norm"] * 2 + ["timesteps_per_s"] * 2])
    _draw_lines(axes["losses"], curves.losses, "training loss per head (weighted sum: loss)")
    _draw_lines(axes["validation"], _validation_panel(curves.validation),
                "validation metrics (lower is better)", marker="o")
    for name, label in TRAIN_PANELS.items():
        _draw_lines(axes[name], {name: curves.train[name]} if name in curves.train else {}, label,
                    legend=False)
    best = curves.validation.get("val_loss")
    if best is not None and best.values:
        index = min(range(len(best.values)), key=best.values.__getitem__)
        axes["validation"].axvline(best.steps[index], color="#999999", linestyle=":", linewidth=1,
                                   label=f"best val_loss {best.values[index]:.4g} (step {best.steps[index]})")
        axes["validation"].legend(fontsize=8)
    wrapped_title(figure, title or f"training curves of {curves.path.parent.name or curves.path}", fontsize=12)
    save_figure(figure, path, curves.to_dict())
    return figure


def _validation_panel(validation: dict[str, Series]) -> dict[str, Series]:
    """The validation losses; per-agent action losses only when there are few agents."""
    per_agent = [name for name in validation if "_agent" in name]
    if len(per_agent) > 6:
        return {name: s for name, s in validation.items() if name not in per_agent}
    return validation


def _draw_lines(axes: Any, series: dict[str, Series], title: str, *, marker: str | None = None,
                legend: bool = True) -> None:
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("optimiser step")
    if not series:
        axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes,
                  color="#777777")
        axes.set_xticks([])
        axes.set_yticks([])
        return
    for name, s in series.items():
        emphasis = name in ("loss", "val_loss")
        axes.plot(s.steps, s.values, label=name, marker=marker, markersize=3,
                  linewidth=2.0 if emphasis else 1.2, zorder=3 if emphasis else 2)
    values = [v for s in series.values() for v in s.values]
    if values and min(values) > 0 and max(values) / min(values) > 30:
        axes.set_yscale("log")  # heads on different scales stay readable
    axes.grid(True, alpha=0.3)
    # optimiser steps are whole numbers: no tick at step 3.5 when only one or two are logged
    axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
    if legend:
        axes.legend(fontsize=8)


def draw_run_curves(runs: Sequence[str | os.PathLike[str]], directory: str | os.PathLike[str]) -> list[Path]:
    """``training_curves_<run>.png`` in ``directory`` for each run directory holding a
    ``train_log.jsonl``; returns the PNGs written."""
    written: list[Path] = []
    for run in runs:
        log = Path(run) / "train_log.jsonl"
        if not log.is_file():
            continue
        path = Path(directory) / f"training_curves_{slug(Path(run).resolve().name)}.png"
        while path in written:  # runs of the same name in different places
            path = path.with_name(path.stem + "_2.png")
        draw_training_curves(log, path, title=f"training curves of {run}")
        written.append(path)
    return written
