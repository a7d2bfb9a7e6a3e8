"""One configuration dataclass per policy: the constructor's arguments, the saved
``model_config``, the trainer's policy settings and the command line's options, with the
help text of each field in its metadata. A new field is one edit here.

Field metadata:

* ``help``: one line for ``--help`` and the docs;
* ``trainer_default``: what ``agentfast train`` uses when the field differs from the
  constructor's default (the constructor keeps the original model API's sizes, meant
  for 768-d GPT-2 embeddings; the trainer's defaults are small models for agent logs);
* ``choices``: the values allowed (a tuple, or a function that lists them);
* ``from_data``: the field is not a setting but a size the data decides, named as in
  ``DATA_SIZES``; the trainer fills it in from the prepared data.

A config is also a read-only mapping of its fields (``config["embed_dim"]``,
``dict(config)``, ``Policy(**config)``), as the plain dict it replaces was; ``to_dict()``
gives JSON. Importing this module imports no torch, so the command line can build its
options from it quickly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

from ..visibility import MAX_AGENTS, SETTINGS as VISIBILITY_SETTINGS, check_num_agents

# Sizes the data decides: state_dim (the encoder's width), action_dim (the encoder's width,
# or the number of known actions for discrete actions), num_agents, num_options.
DATA_SIZES = ("state_dim", "action_dim", "num_agents", "num_options")


def setting(default: Any = dataclasses.MISSING, *, help: str, trainer_default: Any = dataclasses.MISSING,
            choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
            from_data: str | None = None) -> Any:
    """A config field with its metadata (see the module docstring)."""
    metadata: dict[str, Any] = {"help": help}
    if trainer_default is not dataclasses.MISSING:
        metadata["trainer_default"] = trainer_default
    if choices is not None:
        metadata["choices"] = choices
    if from_data is not None:
        if from_data not in DATA_SIZES:
            raise ValueError(f"from_data must be one of {DATA_SIZES}, got {from_data!r}")
        metadata["from_data"] = from_data
    return field(default=default, metadata=metadata)


def _attention_backends() -> tuple[str, ...]:
    from ..attention.backends import backend_names

    return ("auto", *backend_names())


@dataclass(kw_only=True, eq=False)
class PolicyConfig(Mapping):
    """The settings every policy shares: the backbone's size and how it attends.

    Subclasses set ``model_type`` (the name the policy is registered and saved under) and
    add their own fields.
    """

    model_type: ClassVar[str] = ""

    state_dim: int = setting(help="size of a state vector (the encoder's width)", from_data="state_dim")
    action_dim: int = setting(help="size of an action vector, or the number of actions when "
                                   "discrete_actions (the action head then returns logits)",
                              from_data="action_dim")
    embed_dim: int = setting(256, trainer_default=128, help="transformer width")
    num_layers: int = setting(6, trainer_default=2, help="transformer blocks")
    num_heads: int = setting(8, trainer_default=4, help="attention heads")
    hidden_dim: int = setting(512, trainer_default=256, help="MLP width")
    max_seq_len: int = setting(1024, trainer_default=32,
                               help="timesteps per sequence (training cuts longer episodes into windows)")
    discrete_actions: bool = setting(False, help="classify over the known actions instead of "
                                                 "regressing embeddings")
    dropout: float = setting(0.1, help="dropout probability")
    attn_backend: str = setting("auto", help="attention backend", choices=_attention_backends)
    gradient_checkpointing: bool = setting(False, help="recompute activations in backward to save memory")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{f.name} must be a positive int, got {value!r}")
            choices = f.metadata.get("choices")
            if isinstance(choices, tuple) and value not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    # -- the mapping view and serialisation ----------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def __getitem__(self, name: str) -> Any:
        if name not in self.field_names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.field_names())

    def __len__(self) -> int:
        return len(self.field_names())

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (what a saved policy's ``model_config`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PolicyConfig":
        """The config of ``values``; unknown names are an error that lists the known ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}; "
                             f"its fields are {', '.join(cls.field_names())}")
        return cls(**values)

    def replace(self, **changes: Any) -> "PolicyConfig":
        return dataclasses.replace(self, **changes)

    # -- what the trainer and the command line need to know ------------------------------

    @classmethod
    def setting_fields(cls) -> list[dataclasses.Field]:
        """The fields a user chooses (not the sizes the data decides)."""
        return [f for f in dataclasses.fields(cls) if "from_data" not in f.metadata]

    @classmethod
    def trainer_defaults(cls) -> dict[str, Any]:
        """The value of every setting when ``agentfast train`` is not told otherwise."""
        return {f.name: f.metadata.get("trainer_default", f.default) for f in cls.setting_fields()}

    @classmethod
    def for_data(cls, settings: Mapping[str, Any], sizes: Mapping[str, int]) -> "PolicyConfig":
        """The config of ``settings`` (names of ``setting_fields``; the rest keep their trainer
        defaults) for data of ``sizes`` (``DATA_SIZES``)."""
        values = {**cls.trainer_defaults(), **settings}
        for f in dataclasses.fields(cls):
            if "from_data" in f.metadata:
                values[f.name] = sizes[f.metadata["from_data"]]
        return cls.from_dict(values)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise ValueError if ``settings`` name a field this policy does not have or a value
        it cannot take (checked before any data is read)."""
        cls.for_data(settings, {name: 1 for name in DATA_SIZES})


@dataclass(kw_only=True, eq=False)
class ActionTransformerConfig(PolicyConfig):
    """``ActionTransformer``: one agent's next action from its history."""

    model_type: ClassVar[str] = "action"

    condition_on_returns: bool = setting(
        False, help="condition on returns-to-go, Decision-Transformer style (predict then asks "
                    "for --target-return)")


@dataclass(kw_only=True, eq=False)
class MultiAgentTransformerConfig(PolicyConfig):
    """``MultiAgentTransformer``: several agents acting in turn, each seeing whom it may."""

    model_type: ClassVar[str] = "multi_agent"

    max_num_agents: int = setting(4, help=f"size of the agent embedding table (at most {MAX_AGENTS})",
                                  from_data="num_agents")
    visibility: str = setting(
        "data", choices=VISIBILITY_SETTINGS,
        help="who sees whom in training batches: data (each episode's own metadata), full, "
             "private or hub")

    def validate(self) -> None:
        if isinstance(self.max_num_agents, int):
            check_num_agents(self.max_num_agents, "max_num_agents")
        super().validate()


@dataclass(kw_only=True, eq=False)
class HierarchicalTransformerConfig(PolicyConfig):
    """``HierarchicalTransformer``: options (strategies) over actions."""

    model_type: ClassVar[str] = "hierarchical"

    num_options: int = setting(help="number of options", from_data="num_options")
