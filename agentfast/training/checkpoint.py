"""Checkpoints: pretrained-model directories and resumable training state, written atomically.

Two kinds of directory:

* a **pretrained policy** (``save_pretrained`` / ``load_pretrained``): ``config.json`` (model
  type and constructor arguments, training and data settings, encoder identity),
  ``model.safetensors`` (weights), ``vocab.json`` (action, agent and option labels) and
  ``action_bank.safetensors`` (the embeddings of the known actions, for retrieval).
* a **training checkpoint** under ``<output>/checkpoints/step-XXXXXXXX/``: the current and
  best weights plus ``trainer_state.pt`` (optimiser, scheduler, grad scaler, RNG states,
  step, data position, early-stopping state). ``checkpoints/latest`` names the newest one.

Atomicity: every file is written to a temporary name in the same directory, fsynced and
renamed over its target; a training checkpoint is assembled in a hidden temporary
directory and renamed into place in one step, and only then does ``latest`` move to it.
A kill at any moment therefore leaves either the previous checkpoint or the new one,
never a torn one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

FORMAT_NAME = "agentfast-policy"
TRAINING_FORMAT_NAME = "agentfast-training-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
BANK_FILE = "action_bank.safetensors"
BEST_WEIGHTS_FILE = "best_model.safetensors"
STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not fit what it is loaded into."""


# ----------------------------------------------------------------------------- atomic files

def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Weights of ``model`` as safetensors (shared tensors are stored once)."""
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp))


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model``; a mismatch raises CheckpointError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read weights {path}: {error}") from error
    load_state_dict_checked(model, state, source=str(path))


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


# ----------------------------------------------------------------------------- models

def model_classes() -> dict[str, type]:
    """Model type name -> class (imported on first use to keep ``import agentfast`` cheap)."""
    from ..models import ActionTransformer, HierarchicalTransformer, MultiAgentTransformer

    return {
        "action": ActionTransformer,
        "multi_agent": MultiAgentTransformer,
        "hierarchical": HierarchicalTransformer,
    }


def build_model_from_config(model_type: str, model_config: dict[str, Any]) -> nn.Module:
    classes = model_classes()
    if model_type not in classes:
        raise CheckpointError(f"unknown model type {model_type!r}; known: {sorted(classes)}")
    try:
        return classes[model_type](**model_config)
    except TypeError as error:
        raise CheckpointError(
            f"checkpoint model config does not fit {classes[model_type].__name__}: {error}"
        ) from error


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@dataclass
class PretrainedPolicy:
    """A loaded policy: the model and everything needed to use it."""

    model: nn.Module
    model_type: str
    config: dict[str, Any]
    vocab: dict[str, Any]
    action_bank: torch.Tensor | None
    directory: Path

    @property
    def action_texts(self) -> list[str]:
        return list(self.vocab.get("action", []))


def save_pretrained(directory: str | os.PathLike, model: nn.Module, *, model_type: str,
                    metadata: dict[str, Any] | None = None, vocab: dict[str, Any] | None = None,
                    action_bank: torch.Tensor | None = None) -> Path:
    """Write a pretrained policy directory (weights first, config last, each atomic)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    if not hasattr(model, "config"):
        raise CheckpointError(f"{type(model).__name__} has no .config; cannot save it")
    save_weights(model, directory / WEIGHTS_FILE)
    if action_bank is not None:
        save_state_dict({"embeddings": action_bank.float()}, directory / BANK_FILE)
    atomic_write_json(directory / VOCAB_FILE, vocab or {})
    from .. import __version__

    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "agentfast_version": __version__,
        "model_type": model_type,
        "model_class": type(model).__name__,
        "model_config": dict(model.config),
        **(metadata or {}),
    }
    atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def read_pretrained_config(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    config_path = directory / CONFIG_FILE
    if (directory / STATE_FILE).is_file() or (directory / LATEST_FILE).is_file():
        raise CheckpointError(_training_checkpoint_message(directory))
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} is not an agentfast policy: {CONFIG_FILE} is missing "
            "(pass the --output directory of `agentfast train`)"
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


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> PretrainedPolicy:
    """Load a directory written by ``save_pretrained`` (weights checked key by key)."""
    directory = Path(directory)
    config = read_pretrained_config(directory)
    model = build_model_from_config(config["model_type"], config["model_config"])
    load_weights(model, directory / WEIGHTS_FILE)
    vocab = _read_vocab(directory / VOCAB_FILE)
    bank = None
    if (directory / BANK_FILE).is_file():
        tensors = _load_tensors(directory / BANK_FILE, "action bank")
        if "embeddings" not in tensors or tensors["embeddings"].dim() != 2:
            raise CheckpointError(f"action bank {directory / BANK_FILE} holds no 2-D "
                                  "'embeddings' tensor")
        bank = tensors["embeddings"].to(device)
    model.to(device).eval()
    return PretrainedPolicy(model=model, model_type=config["model_type"], config=config,
                            vocab=vocab, action_bank=bank, directory=directory)


def _read_vocab(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"cannot read vocabulary {path}: not valid JSON ({error})") from error
    if not isinstance(vocab, dict) or not all(isinstance(v, list) for v in vocab.values()):
        raise CheckpointError(f"vocabulary {path} must map names to lists of labels")
    return vocab


# ----------------------------------------------------------------------------- RNG

def capture_rng_state() -> dict[str, Any]:
    """All random generators a training step may draw from (torch, CUDA, Python, NumPy)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples; serialisation may have turned them into lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


# ----------------------------------------------------------------------------- training checkpoints

def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def save_training_checkpoint(output_dir: str | os.PathLike, step: int, *, model: nn.Module,
                             best_state: dict[str, torch.Tensor] | None,
                             trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step-<step>/`` atomically, point ``latest`` at it, prune old ones."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{CHECKPOINT_PREFIX}{step:08d}"
    final = root / name
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        save_weights(unwrap(model), staging / WEIGHTS_FILE)
        if best_state is not None:
            save_state_dict(best_state, staging / BEST_WEIGHTS_FILE)
        atomic_torch_save(trainer_state, staging / STATE_FILE)
        atomic_write_json(staging / CONFIG_FILE, {
            "format": TRAINING_FORMAT_NAME, "format_version": FORMAT_VERSION,
            "model_class": type(unwrap(model)).__name__,
            "model_config": dict(getattr(unwrap(model), "config", {})),
            "step": step,
        })
        if final.exists():  # same step saved twice (e.g. final save after an eval save)
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(root)
    atomic_write_text(root / LATEST_FILE, name + "\n")
    _prune_checkpoints(root, keep=keep, protect=name)
    return final


def _step_dirs(root: Path) -> list[Path]:
    dirs = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    return sorted(dirs, key=lambda p: p.name)


def _prune_checkpoints(root: Path, keep: int, protect: str) -> None:
    dirs = _step_dirs(root)
    for path in dirs[:-keep] if keep > 0 else dirs:
        if path.name != protect:
            shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete training checkpoint under ``output_dir`` (None if there is none).

    Reads ``latest``; if that is missing or names a vanished directory, falls back to the
    highest-numbered complete ``step-*`` directory (directories only appear complete).
    """
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return None
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    complete = [p for p in _step_dirs(root) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``trainer_state.pt`` of the training checkpoint ``path``; CheckpointError if damaged."""
    state_path = Path(path) / STATE_FILE
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read training state {state_path}: {error} (delete "
                              f"{Path(path).name} to resume from an earlier checkpoint, or start "
                              "over with --overwrite)") from error
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{state_path} is not an agentfast training state")
    return state


def load_training_checkpoint(path: str | os.PathLike, model: nn.Module
                             ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Load weights into ``model``; return (trainer_state, best_state or None)."""
    path = Path(path)
    load_weights(unwrap(model), path / WEIGHTS_FILE)
    state = read_trainer_state(path)
    best = None
    if (path / BEST_WEIGHTS_FILE).is_file():
        best = _load_tensors(path / BEST_WEIGHTS_FILE, "best weights")
    return state, best


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {what} {path}: {error}") from error
