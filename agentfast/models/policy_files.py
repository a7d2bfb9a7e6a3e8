"""The files of a saved policy, written atomically and read back with checks.

A **policy directory** (``save_pretrained``, and every ``agentfast train --output``) holds:

* ``config.json``: the format name and version, the model type and its configuration,
  plus what its trainer recorded (training and data settings, the encoder's identity);
* ``model.safetensors``: the weights;
* ``vocab.json``: the action, agent and option labels behind the ids;
* ``action_bank.safetensors``: the embeddings of the known actions, for retrieval.

A run directory also holds ``checkpoints/`` (the trainer's resumable state); its layout is
named here so that a policy loader can tell a user who points at a checkpoint where the
policy is. Every file is written whole or not at all (``agentfast.atomic_files``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..atomic_files import atomic_write, atomic_write_json
from ..errors import FileError, accessing

FORMAT_NAME = "agentfast-policy"
# 2: model_config holds every field of the policy's configuration (version 1 kept the
# policy's training-side settings, visibility and condition_on_returns, in train_config).
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
BANK_FILE = "action_bank.safetensors"
# The trainer's part of a run directory: <run>/checkpoints/step-XXXXXXXX/trainer_state.pt
# and <run>/checkpoints/latest.
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"


class CheckpointError(FileError, ValueError):
    """A checkpoint is missing, damaged, or does not fit what it is loaded into (a
    ``FileError``: the command line prints it as one line)."""


# ----------------------------------------------------------------------------- weights

def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Weights of ``model`` as safetensors (shared tensors are stored once)."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp))


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_tensors(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError naming ``what`` and the file if it
    is unreadable or a floating-point tensor holds NaN or infinite values (bytes that are not
    the saved ones under a valid header: a torn copy, a disk error)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {what} {path}: {error}") from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{what} {path} is damaged: tensor {name!r} holds {bad} NaN or infinite "
                f"value{'s' if bad != 1 else ''} of {tensor.numel()} (its bytes are not the "
                "saved ones); copy the file again or resume from an earlier checkpoint")
    return tensors


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model``; a mismatch raises CheckpointError."""
    load_state_dict_checked(model, load_tensors(path, "weights"), source=str(path))


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error that names missing, unexpected and misshapen keys.

    Tied weights saved once by safetensors come back under one name only; the other names
    of the same storage are not reported missing.
    """
    own = model.state_dict()
    aliases = _tied_aliases(model)
    missing = [k for k in own if k not in state and not any(a in state for a in aliases.get(k, ()))]
    unexpected = [k for k in state if k not in own]
    misshapen = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if misshapen:
            details.append(f"shape mismatch {misshapen[:5]}")
        raise CheckpointError(
            f"checkpoint {source} does not fit this model ({'; '.join(details)}); "
            "was it trained with a different model type, size or encoder?"
        )
    model.load_state_dict(state, strict=False)


def _tied_aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    by_storage: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_storage.setdefault(tensor.data_ptr(), []).append(name)
    return {name: tuple(n for n in names if n != name)
            for names in by_storage.values() if len(names) > 1 for name in names}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ----------------------------------------------------------------------------- policy directories

def write_policy(directory: str | os.PathLike, model: nn.Module, *, model_type: str,
                 metadata: dict[str, Any] | None = None, vocab: dict[str, Any] | None = None,
                 action_bank: torch.Tensor | None = None) -> Path:
    """Write a policy directory (weights first, config last, each atomic)."""
    directory = Path(directory)
    with accessing(directory, "create the policy folder"):
        directory.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    if not hasattr(model, "config"):
        raise CheckpointError(f"{type(model).__name__} has no .config; cannot save it")
    save_weights(model, directory / WEIGHTS_FILE)
    if action_bank is not None:
        save_state_dict({"embeddings": action_bank.float()}, directory / BANK_FILE)
    atomic_write_json(directory / VOCAB_FILE, vocab or {})
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "agentfast_version": __version__,
        "model_type": model_type,
        "model_class": type(model).__name__,
        "model_config": dict(model.config),  # a policy config's fields, or a plain dict
        **(metadata or {}),
    }
    atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def read_pretrained_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a policy directory, checked; CheckpointError says what is wrong
    (a missing directory, a training checkpoint, another format, a newer version)."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    config_path = directory / CONFIG_FILE
    if (directory / STATE_FILE).is_file() or (directory / LATEST_FILE).is_file():
        raise CheckpointError(_training_checkpoint_message(directory))
    if not config_path.is_file():
        if (directory / CHECKPOINTS_DIR).is_dir():
            raise CheckpointError(
                f"{directory} holds a training run that has not finished: its policy is saved "
                f"({CONFIG_FILE} and the weights) when training ends; finish it with "
                f"`agentfast train DATA --output {directory} --resume`")
        raise CheckpointError(
            f"{directory} is not an agentfast policy: it has no {CONFIG_FILE} (a policy is "
            "the --output folder of a finished `agentfast train`)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{config_path} is not an agentfast policy config "
            f"(format={config.get('format') if isinstance(config, dict) else None!r})"
        )
    if int(config.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format version {config['format_version']}; this agentfast "
            f"reads up to {FORMAT_VERSION}"
        )
    missing = [key for key in ("model_type", "model_config") if key not in config]
    if missing:
        raise CheckpointError(f"{config_path} lacks {' and '.join(missing)}; it is not a "
                              "complete saved policy")
    return config


def _training_checkpoint_message(directory: Path) -> str:
    """Where the policy of the run that wrote the training checkpoint ``directory`` is."""
    run = directory.parent if directory.name == CHECKPOINTS_DIR else directory.parent.parent
    if (run / CONFIG_FILE).is_file():
        return (f"{directory} is a training checkpoint, not a saved policy; pass the run's "
                f"--output folder {run}, where the trained policy is")
    return (f"{directory} is a training checkpoint, not a saved policy, and {run} holds no "
            "policy yet: finish the run with `agentfast train DATA --output "
            f"{run} --resume` (the policy is saved when training ends)")


def build_saved_model(cls: type[nn.Module], config: dict[str, Any]) -> nn.Module:
    """``cls`` built from a saved ``config.json``, policies saved by older versions included."""
    values = dict(config["model_config"])
    config_class = getattr(cls, "config_class", None)
    if config_class is None:  # not a SequencePolicy: its config is its constructor's arguments
        return _construct(cls, lambda: cls(**values))
    if int(config.get("format_version", 1)) < 2:
        legacy = config.get("train_config", {})
        values.update({name: legacy[name] for name in config_class.field_names()
                       if name not in values and name in legacy})
    return _construct(cls, lambda: cls(config=config_class.from_dict(values)))


def _construct(cls: type[nn.Module], build: Any) -> nn.Module:
    try:
        return build()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint model config does not fit {cls.__name__}: {error}") from error


def read_vocab(directory: str | os.PathLike) -> dict[str, Any]:
    """The labels of a policy directory's ids (every saved policy has them, if empty)."""
    path = Path(directory) / VOCAB_FILE
    if not path.is_file():
        raise CheckpointError(
            f"policy {directory} has no {VOCAB_FILE} (the labels of its actions, agents and "
            "options, written with the weights): the folder is incomplete; copy it whole "
            "or train again")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read vocabulary {path}: not valid JSON ({error})") from error
    if not isinstance(vocab, dict) or not all(isinstance(v, list) for v in vocab.values()):
        raise CheckpointError(f"vocabulary {path} must map names to lists of labels")
    return vocab


def read_action_bank(directory: str | os.PathLike) -> torch.Tensor | None:
    """The action bank of a policy directory (None when it saved none)."""
    path = Path(directory) / BANK_FILE
    if not path.is_file():
        return None
    tensors = load_tensors(path, "action bank")
    if "embeddings" not in tensors or tensors["embeddings"].dim() != 2:
        raise CheckpointError(f"action bank {path} holds no 2-D 'embeddings' tensor")
    return tensors["embeddings"]
