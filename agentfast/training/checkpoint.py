"""Training checkpoints: the trainer's resumable state, written atomically.

A training checkpoint lives under ``<output>/checkpoints/step-XXXXXXXX/``: the current and
best weights plus ``trainer_state.pt`` (optimiser, scheduler, grad scaler, RNG states,
step, data position, early-stopping state). ``checkpoints/latest`` names the newest one.
The trained policy itself is saved beside them as a policy directory
(``agentfast.models.save_pretrained``).

Atomicity: every file is written to a temporary name in the same directory, fsynced and
renamed over its target; a training checkpoint is assembled in a hidden temporary
directory and renamed into place in one step, and only then does ``latest`` move to it.
A kill at any moment therefore leaves either the previous checkpoint or the new one,
never a torn one.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._lazy import moved_names
from ..atomic_files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    fsync_directory,
    new_directory_mode,
)
from ..errors import accessing
from ..models.policy_files import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    LATEST_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    build_saved_model,
    load_tensors,
    load_weights,
    save_state_dict,
    save_weights,
    unwrap,
)
from ..models.registry import POLICIES, policy_class
from ..interruption import pause_point

TRAINING_FORMAT_NAME = "agentfast-training-checkpoint"
BEST_WEIGHTS_FILE = "best_model.safetensors"
CHECKPOINT_PREFIX = "step-"

# Saving and loading policies moved to agentfast.models (the trainer is not needed for them).
__getattr__ = moved_names(__name__, {
    "save_pretrained": "agentfast.models.pretrained",
    "load_pretrained": "agentfast.models.pretrained",
    "PretrainedPolicy": "agentfast.models.pretrained",
    "read_pretrained_config": "agentfast.models.policy_files",
    "FORMAT_NAME": "agentfast.models.policy_files",
    "VOCAB_FILE": "agentfast.models.policy_files",
    "BANK_FILE": "agentfast.models.policy_files",
    "load_state_dict_checked": "agentfast.models.policy_files",
})


def model_classes() -> dict[str, type]:
    """Deprecated: ``agentfast.models.registry.policy_class(model_type)``."""
    warnings.warn("agentfast.training.checkpoint.model_classes() is replaced by "
                  "agentfast.models.registry.policy_class(model_type); the old name will be removed",
                  DeprecationWarning, stacklevel=2)
    return {name: entry.policy_class for name, entry in POLICIES.items()}


def build_model_from_config(model_type: str, model_config: dict[str, Any]) -> nn.Module:
    """Deprecated: ``agentfast.models.registry.policy_class(model_type)(**model_config)``."""
    warnings.warn("agentfast.training.checkpoint.build_model_from_config moved to "
                  "agentfast.models.policy_files.build_saved_model; the old name will be removed",
                  DeprecationWarning, stacklevel=2)
    try:
        cls = policy_class(model_type)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    return build_saved_model(cls, {"model_config": model_config})


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` whole or not at all. It writes through a Python file, so a full disk
    is an OSError (given a path, torch's own writer says only "unexpected pos")."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    atomic_write(path, write)


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
    name = f"{CHECKPOINT_PREFIX}{step:08d}"
    final = root / name
    with accessing(root, "write a checkpoint in"):
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        with accessing(root, "write a checkpoint in"):
            os.chmod(staging, new_directory_mode())  # mkdtemp's 0700 would outlive the rename
        save_weights(unwrap(model), staging / WEIGHTS_FILE)
        if best_state is not None:
            save_state_dict(best_state, staging / BEST_WEIGHTS_FILE)
        pause_point(f"checkpoint-{step}-weights")
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
    fsync_directory(root)
    pause_point(f"checkpoint-{step}-renamed")
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
    remedy = (f"delete {Path(path).name} to resume from an earlier checkpoint, or start over "
              "with --overwrite")
    if state_path.is_file() and state_path.stat().st_size == 0:
        raise CheckpointError(f"training state {state_path} is empty (0 bytes: its write never "
                              f"finished, or it was copied before it did); {remedy}")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        reason = str(error).strip() or f"{type(error).__name__}, the file ends too early"
        raise CheckpointError(f"cannot read training state {state_path}: {reason} "
                              f"({remedy})") from error
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
        best = load_tensors(path / BEST_WEIGHTS_FILE, "best weights")
    return state, best
