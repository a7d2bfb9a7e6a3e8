"""Pictures of a held-out evaluation: policies next to the baselines.

``draw_evaluation`` takes an ``EvaluationReport`` (``agentfast evaluate``'s) and writes:

* ``accuracy_by_task_type.png``: top-1 action accuracy per held-out task type (and over
  all held-out steps) for every policy, with the baselines' bars beside them;
* ``options_<policy>.png`` per hierarchical policy: the option confusion matrix (true
  option against the option it chose);
* ``termination.png``: precision, recall and F1 of the option-termination predictions of
  hierarchical policies and of the baselines;
* ``values.png``: each value head's prediction against the return-to-go it estimates.

A JSON file beside each PNG holds the numbers it draws; each ``draw_*`` function also
returns its matplotlib Figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .figures import new_figure, save_figure, slug

POLICY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
                  "#e377c2")
BASELINE_COLOURS = ("#b3b3b3", "#7f7f7f", "#595959")


def draw_evaluation(report: Any, directory: str | os.PathLike[str]) -> list[Path]:
    """Every evaluation picture ``report`` has data for, into ``directory``; returns the
    PNGs written. ``report`` is an ``EvaluationReport`` (rows of (name, metrics), the names
    of its baselines, the option labels and each policy's (value, return) pairs)."""
    directory = Path(directory)
    rows = list(report.rows)
    baselines = set(report.baselines)
    written = [directory / "accuracy_by_task_type.png"]
    draw_task_type_accuracy(rows, baselines, written[0])
    for name, metrics in rows:
        if name not in baselines and metrics.get("option_confusion") is not None:
            path = directory / f"options_{slug(name)}.png"
            draw_option_confusion(name, metrics, report.option_labels, path)
            written.append(path)
    hierarchical = [name for name, m in rows if name not in baselines and m.get("term_f1") is not None]
    if hierarchical:
        shown = [(n, m) for n, m in rows if n in hierarchical or (n in baselines and m.get("term_f1") is not None)]
        written.append(directory / "termination.png")
        draw_termination(shown, baselines, written[-1])
    if report.value_pairs:
        baseline_mae = {n: m["value_mae"] for n, m in rows if n in baselines and m.get("value_mae") is not None}
        written.append(directory / "values.png")
        draw_value_scatter(report.value_pairs, written[-1], baseline_mae=baseline_mae)
    return written


def _colours(names: Sequence[str], baselines: set[str]) -> dict[str, str]:
    colours, policy, baseline = {}, 0, 0
    for name in names:
        if name in baselines:
            colours[name] = BASELINE_COLOURS[baseline % len(BASELINE_COLOURS)]
            baseline += 1
        else:
            colours[name] = POLICY_COLOURS[policy % len(POLICY_COLOURS)]
            policy += 1
    return colours


def draw_task_type_accuracy(rows: Sequence[tuple[str, Mapping[str, Any]]], baselines: set[str],
                            path: str | os.PathLike[str]) -> Any:
    """Grouped bars: for each held-out task type (and all held-out steps together) the
    top-1 accuracy of every predictor; baselines in greys, hatched."""
    task_types = sorted({t for _, m in rows for t in m.get("top1_by_task_type", {})})
    groups = [*task_types, "all held-out"] if len(task_types) != 1 else task_types  # one type: the same bars
    steps = next((m.get("steps_by_task_type") for _, m in rows if m.get("steps_by_task_type")), {})
    names = [name for name, _ in rows]
    values = {name: [m.get("top1_by_task_type", {}).get(t) for t in task_types]
              + ([m.get("top1")] if len(groups) > len(task_types) else []) for name, m in rows}
    colours = _colours(names, baselines)
    figure = new_figure(max(7.0, 1.1 * len(groups) * max(1, len(names)) ** 0.5 + 3.5), 5.2)
    axes = figure.add_subplot()
    width = 0.8 / len(names)
    positions = np.arange(len(groups))
    for index, name in enumerate(names):
        heights = [np.nan if v is None else v for v in values[name]]
        bars = axes.bar(positions - 0.4 + width * (index + 0.5), heights, width * 0.95, label=name,
                        color=colours[name], hatch="//" if name in baselines else None,
                        edgecolor="white" if name in baselines else colours[name])
        axes.bar_label(bars, labels=["" if np.isnan(h) else f"{h:.2f}" for h in heights],
                       fontsize=7, padding=1, rotation=90 if len(names) > 3 else 0)
    labels = [f"{g}\n({steps[g]} steps)" if g in steps else g for g in groups]
    if steps and len(groups) > len(task_types):
        labels[-1] = f"all held-out\n({sum(steps.values())} steps)"
    axes.set_xticks(positions, labels, fontsize=9)
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("top-1 action accuracy")
    if len(groups) > len(task_types):
        axes.axvline(len(groups) - 1.5, color="#cccccc", linewidth=1)  # sets "all" apart
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, ncol=min(len(names), 3), loc="upper left")
    axes.set_title("held-out top-1 accuracy per task type: policies (colours) and baselines (grey, hatched)",
                   fontsize=10)
    data = {"groups": groups, "steps": steps, "baselines": sorted(baselines),
            "top1": {name: values[name] for name in names}}
    save_figure(figure, path, data)
    return figure


def draw_option_confusion(name: str, metrics: Mapping[str, Any], option_labels: Sequence[str],
                          path: str | os.PathLike[str]) -> Any:
    """The option confusion matrix of one policy: counts in the cells, colour = the share
    of the true option's steps (row-normalised)."""
    counts = np.array(metrics["option_confusion"], dtype=np.int64)
    size = max(len(option_labels), counts.shape[0])
    padded = np.zeros((size, size), dtype=np.int64)
    padded[: counts.shape[0], : counts.shape[1]] = counts
    labels = list(option_labels) + [f"option {i}" for i in range(len(option_labels), size)]
    totals = padded.sum(axis=1, keepdims=True)
    shares = np.divide(padded, totals, out=np.zeros(padded.shape, dtype=float), where=totals > 0)
    side = float(np.clip(0.7 * size + 3.0, 4.5, 11.0))
    figure = new_figure(side + 1.5, side)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), count in np.ndenumerate(padded):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=8,
                      color="white" if shares[row, column] > 0.6 else "black")
    axes.set_xticks(range(size), labels, rotation=35, ha="right", fontsize=9)
    axes.set_yticks(range(size), [f"{label} ({int(n)})" for label, n in zip(labels, totals[:, 0])],
                    fontsize=9)
    axes.set_xlabel("option the policy chose")
    axes.set_ylabel("logged option (steps)")
    figure.colorbar(image, ax=axes, label="share of the logged option's steps", shrink=0.8)
    accuracy = metrics.get("option_acc")
    axes.set_title(f"{name}: option confusion on held-out steps"
                   + (f"\noption accuracy {accuracy:.3f}; cells: step counts" if accuracy is not None else ""),
                   fontsize=10)
    data = {"policy": name, "labels": labels, "counts": padded.tolist(), "row_shares": shares.tolist(),
            "option_acc": accuracy}
    save_figure(figure, path, data)
    return figure


def draw_termination(rows: Sequence[tuple[str, Mapping[str, Any]]], baselines: set[str],
                     path: str | os.PathLike[str]) -> Any:
    """Precision, recall and F1 of option-termination predictions, one group per predictor."""
    measures = (("term_precision", "precision"), ("term_recall", "recall"), ("term_f1", "F1"))
    names = [name for name, _ in rows]
    figure = new_figure(max(6.0, 1.6 * len(names) + 2.5), 4.8)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    shades = ("#4c72b0", "#dd8452", "#55a868")
    for index, (key, label) in enumerate(measures):
        heights = [np.nan if m.get(key) is None else m[key] for _, m in rows]
        bars = axes.bar(positions - 0.3 + 0.2 * (index + 0.5), heights, 0.19, label=label,
                        color=shades[index])
        axes.bar_label(bars, labels=["n/a" if np.isnan(h) else f"{h:.2f}" for h in heights],
                       fontsize=7, padding=1)
    axes.set_xticks(positions, [f"{n}\n(baseline)" if n in baselines and "baseline" not in n else n
                                for n in names], fontsize=9)
    axes.set_ylim(0, 1.15)
    axes.set_ylabel("score on held-out steps with options")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, ncol=3, loc="upper right")
    axes.set_title("option termination: does the option end after this step? "
                   "(n/a: nothing predicted to end)", fontsize=10)
    data = {name: {label: m.get(key) for key, label in measures} for name, m in rows}
    save_figure(figure, path, {"baselines": sorted(baselines), "termination": data})
    return figure


def draw_value_scatter(pairs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                       path: str | os.PathLike[str], *, baseline_mae: Mapping[str, float] | None = None) -> Any:
    """One panel per policy: predicted value (y) against the logged return-to-go (x), the
    diagonal where they agree, and the mean absolute error (next to the baselines')."""
    names = list(pairs)
    baseline_mae = dict(baseline_mae or {})
    compared = "; ".join(f"{n.replace(' baseline', '')} {v:.3f}" for n, v in baseline_mae.items())
    figure = new_figure(max(4.8 * len(names), 6.0) + 0.6, 5.2)
    axes_row = figure.subplots(1, len(names), squeeze=False)[0]
    data = {}
    for axes, name in zip(axes_row, names):
        predicted, returns = (np.asarray(v, dtype=float) for v in pairs[name])
        mae = float(np.abs(predicted - returns).mean()) if len(returns) else float("nan")
        alpha = float(np.clip(30.0 / max(len(returns), 1) ** 0.5, 0.15, 0.8))
        axes.scatter(returns, predicted, s=10, alpha=alpha, color="#1f77b4", edgecolors="none",
                     label=f"{len(returns)} held-out steps")
        if len(returns):
            low = float(min(returns.min(), predicted.min()))
            high = float(max(returns.max(), predicted.max()))
            margin = 0.05 * (high - low or 1.0)
            axes.plot([low - margin, high + margin], [low - margin, high + margin], color="#999999",
                      linestyle="--", linewidth=1, label="value = return")
            axes.set_xlim(low - margin, high + margin)
            axes.set_ylim(low - margin, high + margin)
        axes.set_aspect("equal", adjustable="box")
        axes.set_xlabel("logged return-to-go")
        axes.set_ylabel("predicted value")
        axes.set_title(f"{name}\nmean absolute error {mae:.3f}"
                       + (f"\n(baselines: {compared})" if compared else ""), fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8, loc="upper left")
        data[name] = {"returns": returns.tolist(), "predicted": predicted.tolist(), "mae": mae}
    figure.suptitle("value head against the discounted return-to-go it estimates\n"
                    "(held-out steps of episodes with rewards)", fontsize=11)
    save_figure(figure, path, {"policies": data, "baseline_mae": baseline_mae})
    return figure
