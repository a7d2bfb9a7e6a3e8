"""Figures without a display: matplotlib's object API on the Agg canvas.

Figures are built as ``matplotlib.figure.Figure`` objects attached to an Agg canvas, never
through pyplot, so drawing needs no display, leaves pyplot's global backend and figure list
alone (a notebook's inline backend keeps working) and frees each figure with its last
reference. matplotlib is an optional extra (``agentfast[plot]``) imported only here, when a
figure is made.

Every picture is written as ``NAME.png`` with the numbers it draws as ``NAME.json`` beside
it, so what a reader sees can be checked, compared between runs or redrawn elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_open, atomic_write_text

PLOT_EXTRA = "pip install 'agentfast[plot]'"
DPI = 120


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches on an Agg canvas,
    with constrained layout (labels and legends do not overlap the axes)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"drawing needs matplotlib, which is not installed ({PLOT_EXTRA})") from error
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def wrapped_title(figure: Any, text: str, fontsize: float) -> Any:
    """``figure.suptitle(text)`` with each line wrapped to the figure's width (a title that
    names a run directory is often wider than a one- or two-panel figure)."""
    # DejaVu Sans averages about 0.55 em per character
    per_line = max(20, int(figure.get_figwidth() * 72 / (0.55 * fontsize)) - 2)
    lines = [wrapped for line in text.split("\n")
             for wrapped in textwrap.wrap(line, per_line, break_on_hyphens=False) or [""]]
    return figure.suptitle("\n".join(lines), fontsize=fontsize)


def save_figure(figure: Any, path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``figure`` to ``path`` (a ``.png``) and ``data`` to the ``.json`` beside it;
    returns the PNG's path. Parent directories are created; each file is written whole or
    not at all (``agentfast.atomic_files``)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG; name a .png file, got {path}")
    with atomic_open(path, binary=True) as handle:  # whole or not at all, like every output
        figure.savefig(handle, format="png", dpi=DPI)
    atomic_write_text(path.with_suffix(".json"), json.dumps(_finite(data), indent=1) + "\n")
    return path


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def thinned_ticks(count: int, most: int = 24) -> list[int]:
    """Indices ``0, k, 2k, ...`` below ``count`` with a round step ``k`` (1, 2, 5, 10, 20,
    ...), at most ``most`` of them, so tick labels of long sequences do not overlap."""
    step = 1
    multipliers = (2, 2.5, 2)  # 1 -> 2 -> 5 -> 10 -> 20 -> 50 ...
    index = 0
    while math.ceil(count / step) > most:
        step = int(step * multipliers[index % 3])
        index += 1
    return list(range(0, count, step))


def slug(name: str) -> str:
    """``name`` as a file-name part: lower case, runs of other characters as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unnamed"
