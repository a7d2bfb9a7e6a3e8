"""Training configuration: one dataclass that is saved with every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MODEL_TYPES = ("action", "multi_agent", "hierarchical")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that decides a training run, besides the data and the encoder.

    Model fields are passed to the model constructor; the rest drive the optimiser, the
    losses, evaluation during training, early stopping and checkpointing.
    """

    model_type: str = "action"
    # model
    embed_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    hidden_dim: int = 256
    max_seq_len: int = 32
    dropout: float = 0.1
    discrete_actions: bool = False
    attn_backend: str = "auto"
    gradient_checkpointing: bool = False
    visibility: str = "data"  # multi-agent: data (episodes' own), full, private or hub
    condition_on_returns: bool = False  # feed returns-to-go to the ActionTransformer
    # optimisation
    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    max_steps: int = 1000
    grad_clip: float = 1.0
    precision: str = "fp32"
    # losses
    mse_weight: float = 1.0
    value_weight: float = 0.25
    option_weight: float = 1.0
    termination_weight: float = 0.5
    # evaluation during training and early stopping
    eval_every: int = 50
    patience: int = 5
    min_delta: float = 1e-4
    # checkpoints
    save_every: int = 0  # 0: save at every evaluation
    keep_checkpoints: int = 2
    # reproducibility and logging
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("embed_dim", "num_layers", "num_heads", "hidden_dim", "max_seq_len",
                     "batch_size", "max_steps", "eval_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "patience", "save_every", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config fields: {', '.join(unknown)}")
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
