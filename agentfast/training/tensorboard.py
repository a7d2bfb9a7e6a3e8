"""TensorBoard event files for a training run (``torch.utils.tensorboard``).

The trainer hands every record it writes to ``train_log.jsonl`` to ``TensorBoardLogger``
as well, which turns them into scalars:

* ``train/loss`` and one ``train/<head>_loss`` per head (action, value, option,
  termination), every ``log_every`` steps;
* ``optim/learning_rate``, ``optim/grad_norm`` (before clipping) and
  ``speed/timesteps_per_s``;
* ``val/loss``, ``val/<head>_loss``, per-agent ``val/action_loss_agent<i>`` and
  ``val/best_loss`` at each validation;

and the run's configuration as text (``config``). Open them with
``tensorboard --logdir OUTPUT`` (or the parent directory of several runs, to compare them).

tensorboard is an optional extra (``agentfast[tensorboard]``); without it the run goes on
with the JSONL log alone, saying so once.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

TENSORBOARD_EXTRA = "pip install 'agentfast[tensorboard]'"
_RENAMED = {"lr": "optim/learning_rate", "grad_norm": "optim/grad_norm",
            "timesteps_per_s": "speed/timesteps_per_s", "best_val_loss": "val/best_loss"}
_NOT_SCALARS = {"event", "time", "step", "epoch", "improved"}


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write (the tensorboard package is installed)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def scalar_tag(event: str, name: str) -> str | None:
    """The TensorBoard tag of field ``name`` of a ``train``/``eval`` record, or None for
    fields that are not curves."""
    if name in _NOT_SCALARS:
        return None
    if name in _RENAMED:
        return _RENAMED[name]
    if event == "eval":
        return "val/" + name.removeprefix("val_")
    return "train/" + name


class TensorBoardLogger:
    """Writes trainer records as TensorBoard scalars into ``directory``.

    ``purge_step``: when a run resumes at step k + 1, events of steps > k that an
    interrupted run wrote are hidden, so every curve is that of the run that went on.
    """

    def __init__(self, directory: str | os.PathLike[str], *, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(f"TensorBoard logging needs the tensorboard package ({TENSORBOARD_EXTRA}), "
                              "or turn it off") from error
        self.directory = Path(directory)
        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=purge_step)

    def log_config(self, config: Mapping[str, Any], **sections: Mapping[str, Any]) -> None:
        """The run's configuration as text: one Markdown table per section."""
        parts = [_markdown_table("training configuration", config)]
        parts += [_markdown_table(title.replace("_", " "), values) for title, values in sections.items()]
        self.writer.add_text("config", "\n\n".join(parts), global_step=0)
        self.writer.flush()

    def log(self, record: Mapping[str, Any]) -> None:
        """Write the numeric fields of a ``train`` or ``eval`` record at its step; other
        events are not curves and are left to the JSONL log."""
        event = record.get("event")
        if event not in ("train", "eval"):
            return
        step = int(record["step"])
        for name, value in record.items():
            tag = scalar_tag(event, name)
            if tag is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(tag, float(value), global_step=step)
        if event == "eval":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(directory: str | os.PathLike[str], *, purge_step: int | None = None) -> TensorBoardLogger | None:
    """A ``TensorBoardLogger`` for ``directory``, or None with a warning when tensorboard
    is not installed (training goes on with the JSONL log)."""
    if not tensorboard_available():
        warnings.warn(f"TensorBoard logging is off: the tensorboard package is not installed "
                      f"({TENSORBOARD_EXTRA}); train_log.jsonl has the same numbers",
                      RuntimeWarning, stacklevel=2)
        return None
    return TensorBoardLogger(directory, purge_step=purge_step)


def _markdown_table(title: str, values: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {key} | `{_cell(value)}` |" for key, value in values.items())
    return f"**{title}**\n\n| setting | value |\n|---|---|\n{rows}"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("`", "'")
