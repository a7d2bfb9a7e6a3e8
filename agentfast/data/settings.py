"""What decides a data set besides the log itself: which episodes train, validate and test,
and how texts become vectors. Both are saved with every policy (``config.json``), so
evaluation and inference can read and embed the data the same way.

This module imports nothing heavy: the command line builds its options from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DataSettings:
    """Which episodes train, validate and test."""

    path: str
    format: str = "auto"
    strict: bool = True
    held_out_task_types: list[str] = field(default_factory=list)
    val_fraction: float = 0.15
    window_stride: int | None = None
    gamma: float = 0.99
    split_seed: int = 0

    @classmethod
    def from_policy(cls, config: dict[str, Any], **overrides: Any) -> "DataSettings":
        """The settings a saved policy (its ``config.json``) was trained with; ``overrides``
        that are not None replace them."""
        saved = {k: v for k, v in config.get("data", {}).items() if k in cls.__dataclass_fields__}
        saved.update({k: v for k, v in overrides.items() if v is not None})
        saved.setdefault("path", None)
        return cls(**saved)


@dataclass
class EncoderSettings:
    """How texts become vectors; saved with the policy so inference embeds the same way."""

    name_or_path: str | None = None  # None: the packaged offline default encoder
    pooling: str = "mean"
    normalize: bool = True
    max_length: int | None = None
    batch_size: int = 64
    cache_dir: str | None = None  # None: the default cache; "" turns caching off
    device: str = "auto"  # where the encoder runs: auto (cuda when available), cpu, cuda

    def saved(self) -> dict[str, Any]:
        """The part that decides the embeddings (not where they are cached or computed); a
        local encoder directory is saved as an absolute path, so the policy loads from
        any working directory."""
        name = self.name_or_path
        if name is not None and Path(name).is_dir():
            name = str(Path(name).resolve())
        return {"name_or_path": name, "pooling": self.pooling,
                "normalize": self.normalize, "max_length": self.max_length}

    @classmethod
    def from_policy(cls, config: dict[str, Any], **overrides: Any) -> "EncoderSettings":
        """The settings a saved policy (its ``config.json``) embedded with; ``overrides``
        that are not None replace them."""
        saved = dict(config.get("encoder", {}).get("settings", {}))
        saved.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**saved)
