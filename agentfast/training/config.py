"""Training configuration: one dataclass that is saved with every checkpoint.

``TrainConfig`` names the policy (``model_type``) and its settings (``model``: fields of
the policy's configuration class, ``agentfast.models.config``; the rest keep their trainer
defaults), and everything else that decides the run: the optimiser, the losses, evaluation
during training, early stopping and checkpoints. Each field's help text is in its metadata,
where the command line reads it. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..models.config import PolicyConfig
from ..models.registry import POLICIES, model_types, policy_entry

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def option(default: Any = dataclasses.MISSING, *, help: str | None, choices: Any = None,
           flag: str | None = None, **kwargs: Any) -> Any:
    """A TrainConfig field with its help text (None: not a command-line option), its
    choices (a tuple or a function listing them) and its flag when not ``--field-name``."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if flag is not None:
        metadata["flag"] = flag
    return field(default=default, metadata=metadata, **kwargs)


@dataclass(init=False, eq=False)
class TrainConfig:
    """Everything that decides a training run, besides the data and the encoder."""

    model_type: str = option("action", choices=model_types, flag="--model",
                             help="which policy: action (ActionTransformer), multi_agent or hierarchical")
    model: dict[str, Any] = option(default_factory=dict, help=None)
    # optimisation
    batch_size: int = option(16, help="windows per optimiser step (per process under torchrun)")
    learning_rate: float = option(3e-4, flag="--lr", help="peak AdamW learning rate")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    betas: tuple[float, float] = option((0.9, 0.95), help=None)
    warmup_steps: int = option(50, help="linear warmup steps")
    min_lr_ratio: float = option(0.1, help="final learning rate as a fraction of the peak (cosine decay)")
    max_steps: int = option(1000, help="optimiser steps")
    grad_clip: float = option(1.0, help="clip the gradient norm (0: off)")
    precision: str = option("fp32", choices=PRECISIONS,
                            help="auto, fp32, bf16 (autocast) or fp16 (autocast + grad scaler)")
    # losses
    mse_weight: float = option(1.0, help="weight of MSE next to cosine in the embedding loss")
    value_weight: float = option(0.25, help="weight of the value loss (episodes with rewards)")
    option_weight: float = option(1.0, help="weight of the option loss (hierarchical)")
    termination_weight: float = option(0.5, help="weight of the termination loss (hierarchical)")
    # evaluation during training and early stopping
    eval_every: int = option(50, help="steps between validation evaluations (and checkpoints)")
    patience: int = option(5, help="evaluations without improvement before early stopping (0: never stop)")
    min_delta: float = option(1e-4, help="smallest validation-loss decrease that counts as an improvement")
    # checkpoints
    save_every: int = option(0, help="steps between checkpoints (0: at every evaluation)")
    keep_checkpoints: int = option(2, help="training checkpoints to keep")
    # reproducibility and logging
    seed: int = option(0, help="random seed")
    deterministic: bool = option(False, help="deterministic kernels (bitwise-reproducible on CPU)")
    log_every: int = option(10, help="steps between training-loss log records")
    extra: dict[str, Any] = option(default_factory=dict, help=None)

    def __init__(self, **values: Any) -> None:
        """Keyword arguments only: the fields, with ``model`` the policy's settings.

        Policy settings given flat (``TrainConfig(embed_dim=64)``, as before ``model``
        existed) still work, with a DeprecationWarning.
        """
        flat = {name: values.pop(name) for name in list(values) if name not in _FIELDS}
        if flat:
            unknown = sorted(set(flat) - _policy_setting_names())
            if unknown:
                raise TypeError(f"TrainConfig got unknown settings: {', '.join(unknown)}")
            warnings.warn(f"TrainConfig({', '.join(f'{k}=...' for k in flat)}) is deprecated: pass the "
                          "policy's settings as TrainConfig(model={...})", DeprecationWarning, stacklevel=2)
            values["model"] = {**flat, **values.get("model", {})}
        for f in dataclasses.fields(self):
            if f.name in values:
                value = values[f.name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, f.name, value)
        self.model = dict(self.model)
        self.betas = tuple(self.betas)
        self.validate()

    def __getattr__(self, name: str) -> Any:
        # Policy settings were TrainConfig attributes before ``model`` held them.
        if name.startswith("_") or "model" not in self.__dict__ or name not in _policy_setting_names():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        settings = self.policy_settings()
        if name not in settings:
            raise AttributeError(f"a {self.model_type} policy has no setting {name!r}")
        warnings.warn(f"TrainConfig.{name} is deprecated: read TrainConfig.policy_settings()[{name!r}]",
                      DeprecationWarning, stacklevel=2)
        return settings[name]

    @property
    def policy_config_class(self) -> type[PolicyConfig]:
        return policy_entry(self.model_type).config_class

    def policy_settings(self) -> dict[str, Any]:
        """Every setting of the policy: ``model`` over the policy's trainer defaults."""
        return {**self.policy_config_class.trainer_defaults(), **self.model}

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        if self.model_type not in POLICIES:
            raise ValueError(f"model_type must be one of {model_types()}, got {self.model_type!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.policy_config_class.check_settings(self.model)
        for name in ("batch_size", "max_steps", "eval_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "patience", "save_every", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    def to_dict(self) -> dict[str, Any]:
        """Flat, as checkpoints save it: the model type, every policy setting, the rest."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        data["betas"] = list(self.betas)
        return {"model_type": self.model_type, **self.policy_settings(), **data}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrainConfig):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """The inverse of ``to_dict`` (nested ``model`` settings are read too). Settings of
        other policies, which older checkpoints saved for every policy, are passed over."""
        values = dict(data)
        unknown = sorted(set(values) - _FIELDS - _policy_setting_names())
        if unknown:
            raise ValueError(f"unknown training config fields: {', '.join(unknown)}")
        flat = {name: values.pop(name) for name in list(values) if name not in _FIELDS}
        entry = POLICIES.get(values.get("model_type", "action"))
        own = set(entry.config_class.field_names()) if entry else set(flat)
        values["model"] = {**{k: v for k, v in flat.items() if k in own}, **values.get("model", {})}
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def __getattr__(name: str) -> Any:
    if name == "MODEL_TYPES":  # the registry knows the policies now
        warnings.warn("agentfast.training.config.MODEL_TYPES is replaced by "
                      "agentfast.models.registry.model_types(); the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        return model_types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _policy_setting_names() -> set[str]:
    return {f.name for entry in POLICIES.values() for f in entry.config_class.setting_fields()}
