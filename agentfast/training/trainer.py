"""The training loop: AdamW + warmup/cosine, clipping, AMP, early stopping, resumable
checkpoints and DistributedDataParallel, for any of the three models.

Resume contract: a run stopped right after a checkpoint (killed, or ``stop_after_step``)
and resumed with ``resume=True`` performs exactly the optimiser steps, on exactly the
batches and dropout masks, that the uninterrupted run performs, because the checkpoint
holds the weights, optimiser, scheduler, grad scaler, every RNG state, the position in the
epoch and the early-stopping state. In deterministic mode on CPU the final weights are
bitwise equal.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..atomic_files import atomic_write_text
from ..data.dataset import collate_episodes
from ..errors import accessing
from ..models.policy_files import load_state_dict_checked, unwrap
from .checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from .config import TrainConfig
from .distributed import DistributedContext, ResumableSampler
from ..interruption import pause_point
from .losses import LossWeights, compute_losses, per_step_action_loss, target_mask
from .modeling import move_batch
from .precision import (
    autocast_context,
    make_grad_scaler,
    resolve_precision,
    seed_everything,
    set_deterministic,
)
from .schedules import build_optimizer, warmup_cosine_schedule
from .tensorboard import TensorBoardLogger, open_tensorboard


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations without an improvement larger than ``min_delta``.

    ``patience == 0`` disables stopping (the best model is still tracked).
    """

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int = -1
    bad_evals: int = 0
    stopped: bool = False

    def update(self, value: float, step: int) -> bool:
        """Record one evaluation; return True if it is a new best."""
        if value < self.best - self.min_delta:
            self.best, self.best_step, self.bad_evals = value, step, 0
            return True
        self.bad_evals += 1
        if self.patience and self.bad_evals >= self.patience:
            self.stopped = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class JsonlLogger:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path: str | os.PathLike | None, enabled: bool = True) -> None:
        self.path = Path(path) if path else None
        self.enabled = enabled and self.path is not None
        if self.enabled:
            with accessing(self.path.parent, "create the log folder"):
                self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with accessing(self.path, "append to"), open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")

    def forget_after(self, step: int) -> int:
        """Drop the records of steps after ``step`` (a run killed after its last checkpoint
        logged them, and the resumed run logs them again) and a line a kill cut short;
        returns how many records went. Records without a step are kept."""
        if not self.enabled or not self.path.is_file():
            return 0
        with accessing(self.path, "read"):
            lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if _step_of(line, step) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)


def _step_of(line: str, torn: int) -> float:
    """The ``step`` of a log line; 0 without one; ``torn + 1`` for a line that is not JSON
    (the last line of a killed run, cut short), so it is dropped."""
    try:
        record = json.loads(line)
    except ValueError:
        return torn + 1
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class TrainResult:
    steps: int
    epochs_started: int
    stopped_early: bool
    stopped_by_request: bool
    best_val_loss: float | None
    best_step: int | None
    last_train_loss: float | None
    timesteps: int
    train_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def timesteps_per_second(self) -> float:
        return self.timesteps / self.train_seconds if self.train_seconds > 0 else 0.0


class Trainer:
    """Trains ``model`` on ``train_dataset`` with held-out loss on ``val_dataset``.

    Args:
        model: a registered policy (``agentfast.models``); its own configuration decides
            how it reads a batch (discrete actions, returns, visibility).
        config: the TrainConfig (its policy settings built the model).
        train_dataset / val_dataset: map-style datasets whose items ``collate_fn`` batches
            into the dict of ``agentfast.data.collate_episodes``.
        output_dir: where ``checkpoints/`` go (None: no checkpoints, no resume).
        device: where to train.
        context: the DistributedContext (rank/world size); single process by default.
        log_path: JSONL metrics file (written by rank 0 only).
        progress: show a progress bar on rank 0 (plain lines when output is not a terminal).
        stop_after_step: end the run right after this step, saving a checkpoint first (a
            controlled stand-in for a kill; used by the resume test).
        num_agents: deprecated and unused (a multi-agent policy knows its own agents).
        run_settings: what else decides the run (data split, encoder, ...), saved in every
            checkpoint so a resume can refuse to continue with other settings.
        tensorboard_dir: where rank 0 writes TensorBoard event files of the records it logs
            (``training.tensorboard``; None: none). Needs the tensorboard package; without it
            the run goes on with a warning.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_dataset: Dataset,
                 val_dataset: Dataset | None = None, *, output_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", context: DistributedContext | None = None,
                 log_path: str | os.PathLike | None = None, progress: bool = True,
                 collate_fn: Callable | None = None, stop_after_step: int | None = None,
                 num_agents: int | None = None, run_settings: dict[str, Any] | None = None,
                 tensorboard_dir: str | os.PathLike | None = None) -> None:
        if len(train_dataset) == 0:
            raise ValueError("the training set is empty")
        if num_agents is not None:
            warnings.warn("Trainer(num_agents=...) is deprecated and unused: the policy's config "
                          "holds its agents and visibility", DeprecationWarning, stacklevel=2)
        self.config = config
        self.device = torch.device(device)
        self.context = context or DistributedContext()
        self.output_dir = Path(output_dir) if output_dir else None
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset if val_dataset is not None and len(val_dataset) else None
        self.collate_fn = collate_fn or collate_episodes
        self.progress = progress and self.context.is_main
        self.stop_after_step = stop_after_step
        self.run_settings = dict(run_settings or {})
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir and self.context.is_main else None
        self.tensorboard: TensorBoardLogger | None = None
        self.logger = JsonlLogger(log_path, enabled=self.context.is_main)
        self.precision = resolve_precision(config.precision, self.device)
        self.weights = LossWeights(mse=config.mse_weight, value=config.value_weight,
                                   option=config.option_weight,
                                   termination=config.termination_weight)
        if config.deterministic:  # False leaves the process-wide setting alone
            set_deterministic(True)
        self.model = model.to(self.device)
        self.policy = unwrap(model)  # the policy's own hooks read its batches
        self.train_model = self._wrap_for_ddp(self.model)
        self.optimizer = build_optimizer(self.model, config.learning_rate, config.weight_decay,
                                         tuple(config.betas))
        self.scheduler = warmup_cosine_schedule(self.optimizer, config.warmup_steps,
                                                config.max_steps, config.min_lr_ratio)
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.sampler = ResumableSampler(len(train_dataset), shuffle=True, seed=config.seed,
                                        rank=self.context.rank, world_size=self.context.world_size)
        self.early_stopping = EarlyStopping(config.patience, config.min_delta)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup

    def _wrap_for_ddp(self, model: nn.Module) -> nn.Module:
        if not self.context.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Heads that a batch does not use (a value head without rewards) get no gradient;
        # find_unused_parameters keeps DDP's reducer from waiting for them.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def resume_from(self, checkpoint: str | os.PathLike) -> None:
        """Restore everything a checkpoint holds; the next step is the one after it."""
        state, best = load_training_checkpoint(checkpoint, self.model)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.context.world_size:
            raise ValueError(
                f"checkpoint {checkpoint} was written by {saved_world} processes; resuming "
                f"with {self.context.world_size} would change the data order"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.best_state = best
        self.history = list(state.get("history", []))
        self.logger.forget_after(self.step)
        rng_states = state["rng"]
        restore_rng_state(rng_states[self.context.rank])

    def _fresh_rng(self) -> None:
        """Different dropout streams per rank, reproducible from the seed."""
        seed_everything(self.config.seed + 1 + 1000 * self.context.rank)

    # ------------------------------------------------------------------ checkpoints

    def _trainer_state(self) -> dict[str, Any]:
        rng = self.context.all_gather_object(capture_rng_state())
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "early_stopping": self.early_stopping.state_dict(),
            "rng": rng,
            "world_size": self.context.world_size,
            "train_config": self.config.to_dict(),
            "run_settings": self.run_settings,
            "history": self.history,
        }

    def save_checkpoint(self) -> Path | None:
        """Every rank contributes its RNG state; rank 0 writes."""
        state = self._trainer_state()
        path = None
        if self.context.is_main and self.output_dir is not None:
            path = save_training_checkpoint(self.output_dir, self.step, model=self.model,
                                            best_state=self.best_state, trainer_state=state,
                                            keep=self.config.keep_checkpoints)
            self.logger.log({"event": "checkpoint", "step": self.step, "path": str(path)})
        self.context.barrier()
        return path

    # ------------------------------------------------------------------ steps

    def _loss(self, model: nn.Module, batch: dict[str, Any], with_outputs: bool = False):
        with autocast_context(self.precision, self.device):
            outputs = self.policy.forward_batch(batch, module=model)
        losses = compute_losses(outputs, batch, discrete=self.policy.discrete_actions,
                                weights=self.weights)
        return (losses, outputs) if with_outputs else losses

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        self.train_model.train()
        batch = move_batch(batch, self.device)
        losses = self._loss(self.train_model, batch)
        if not torch.isfinite(losses.total):
            raise FloatingPointError(
                f"training loss became {float(losses.total)} at step {self.step + 1}; "
                "lower the learning rate, check the embeddings for NaN, or use fp32/bf16"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(losses.total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            losses.total.backward()
        grad_norm = float("nan")
        if self.config.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                             self.config.grad_clip))
        pause_point(f"step-{self.step + 1}-backward")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with warnings.catch_warnings():
            # The fp16 scaler skips steps with overflowing gradients (the first few, while
            # it calibrates); the schedule still counts them so it stays tied to the step.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                    category=UserWarning)
            self.scheduler.step()
        metrics = losses.as_floats()
        metrics["grad_norm"] = grad_norm
        return metrics

    @torch.no_grad()
    def validation_loss(self) -> dict[str, float] | None:
        """Mean losses over the whole validation set (every rank computes the same value)."""
        if self.val_dataset is None:
            return None
        model = self.model
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        weight_sum = 0.0
        loader = DataLoader(self.val_dataset, batch_size=self.config.batch_size, shuffle=False,
                            collate_fn=self.collate_fn, generator=_private_generator())
        per_agent: dict[int, list[float]] = {}
        for batch in loader:
            batch = move_batch(batch, self.device)
            mask = target_mask(batch)
            weight = float(mask.sum())
            losses, outputs = self._loss(model, batch, with_outputs=True)
            for name, value in losses.as_floats().items():
                totals[name] = totals.get(name, 0.0) + value * weight
            weight_sum += weight
            if self.policy.uses_agents:
                self._add_per_agent(per_agent, outputs, batch, mask)
        model.train(was_training)
        metrics = {name: value / max(weight_sum, 1.0) for name, value in totals.items()}
        for agent, (loss_sum, count) in sorted(per_agent.items()):
            metrics[f"action_loss_agent{agent}"] = loss_sum / max(count, 1.0)
        return metrics

    def _add_per_agent(self, per_agent: dict[int, list[float]], outputs, batch: dict[str, Any],
                       mask: torch.Tensor) -> None:
        """Accumulate (loss sum, step count) of the action loss per acting agent."""
        steps = per_step_action_loss(outputs.action_preds, batch, self.policy.discrete_actions,
                                     self.config.mse_weight)
        for agent in batch["agent_ids"][mask].unique().tolist():
            rows = mask & (batch["agent_ids"] == agent)
            entry = per_agent.setdefault(int(agent), [0.0, 0.0])
            entry[0] += float(steps[rows].sum())
            entry[1] += float(rows.sum())

    def _evaluate_and_track(self) -> None:
        metrics = self.validation_loss()
        if metrics is None:
            return
        improved = self.early_stopping.update(metrics["loss"], self.step)
        if improved:
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in self.model.state_dict().items()}
        # Ranks agree on stopping by construction, but rank 0 decides to be certain.
        self.early_stopping.stopped = bool(self.context.broadcast_object(self.early_stopping.stopped))
        record = {"event": "eval", "step": self.step,
                  **{f"val_{k}": round(v, 6) for k, v in metrics.items()},
                  "best_val_loss": round(self.early_stopping.best, 6), "improved": improved}
        self.history.append(record)
        self._log(record)
        self._write(f"step {self.step}: val loss {metrics['loss']:.4f}"
                    f"{' (best)' if improved else ''}")

    def _write(self, message: str) -> None:
        if self.context.is_main:
            from ..progress import write

            write(message)

    # ------------------------------------------------------------------ the loop

    def train(self, resume: bool | str | os.PathLike = False) -> TrainResult:
        """Train until ``max_steps``, early stopping, or ``stop_after_step``.

        ``resume=True`` continues from the latest checkpoint in ``output_dir`` (starting
        fresh if there is none); a path resumes from that checkpoint directory. At the end
        the model holds the best validation weights (the last ones without validation).
        """
        checkpoint = self._checkpoint_to_resume(resume)
        if checkpoint is not None:
            self.resume_from(checkpoint)
            self._write(f"resumed from {checkpoint} at step {self.step}")
            self.logger.log({"event": "resume", "step": self.step, "path": str(checkpoint)})
        else:
            self._fresh_rng()
        self._open_tensorboard()
        try:
            return self._train_steps()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None

    def _open_tensorboard(self) -> None:
        """Event files from the step after the current one (a resumed run hides the steps
        an interrupted one wrote past its checkpoint), with the configuration as text."""
        if self.tensorboard_dir is None:
            return
        self.tensorboard = open_tensorboard(self.tensorboard_dir, purge_step=self.step + 1 if self.step else None)
        if self.tensorboard is not None:
            policy_config = getattr(self.policy, "config", None)
            sections = {"run_settings": self.run_settings}
            if hasattr(policy_config, "to_dict"):
                sections["policy"] = policy_config.to_dict()
            self.tensorboard.log_config(self.config.to_dict(), **sections)

    def _log(self, record: dict[str, Any]) -> None:
        """A train or eval record to the JSONL log and the event files."""
        self.logger.log(record)
        if self.tensorboard is not None:
            self.tensorboard.log(record)

    def _train_steps(self) -> TrainResult:
        config = self.config
        bar = self._progress_bar()
        timesteps, train_seconds, last_loss = 0, 0.0, None
        stopped_by_request = False
        while self._should_continue():
            self.sampler.set_position(self.epoch, self.batch_in_epoch * config.batch_size)
            loader = DataLoader(self.train_dataset, batch_size=config.batch_size,
                                sampler=self.sampler, collate_fn=self.collate_fn,
                                generator=_private_generator())
            for batch in loader:
                started = time.perf_counter()
                metrics = self.train_step(batch)
                train_seconds += time.perf_counter() - started
                timesteps += int(batch["valid_mask"].sum())
                self.step += 1
                self.batch_in_epoch += 1
                last_loss = metrics["loss"]
                self._after_step(metrics, bar, timesteps, train_seconds)
                saved = self._maybe_evaluate_and_save()
                if self.stop_after_step is not None and self.step >= self.stop_after_step:
                    if not saved:
                        self.save_checkpoint()
                    stopped_by_request = True
                    break
                if not self._should_continue():
                    break
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
            if stopped_by_request:
                break
        if bar is not None:
            bar.close()
        if self.early_stopping.stopped:
            self._write(f"early stopping at step {self.step}: no improvement in "
                        f"{config.patience} evaluations (best step {self.early_stopping.best_step})")
            self.logger.log({"event": "early_stop", "step": self.step,
                             "best_step": self.early_stopping.best_step})
        if not stopped_by_request and self.best_state is not None:
            load_state_dict_checked(self.model, self.best_state, source="best validation weights")
        timesteps = self._sum_over_ranks(timesteps)
        has_best = self.early_stopping.best_step >= 0
        return TrainResult(
            steps=self.step, epochs_started=self.epoch + 1,
            stopped_early=self.early_stopping.stopped, stopped_by_request=stopped_by_request,
            best_val_loss=self.early_stopping.best if has_best else None,
            best_step=self.early_stopping.best_step if has_best else None,
            last_train_loss=last_loss, timesteps=timesteps, train_seconds=train_seconds,
            history=list(self.history))

    def _checkpoint_to_resume(self, resume: bool | str | os.PathLike) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            if self.output_dir is None:
                raise ValueError("resume=True needs an output_dir to look for checkpoints in")
            return latest_checkpoint(self.output_dir)
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
        return path

    def _should_continue(self) -> bool:
        return self.step < self.config.max_steps and not self.early_stopping.stopped

    def _maybe_evaluate_and_save(self) -> bool:
        """Evaluate/save on schedule; return whether a checkpoint was written this step."""
        config = self.config
        last = self.step >= config.max_steps
        if self.step % config.eval_every == 0 or last:
            self._evaluate_and_track()
            if config.save_every == 0 or last or self.early_stopping.stopped:
                self.save_checkpoint()
                return True
        if config.save_every and self.step % config.save_every == 0:
            self.save_checkpoint()
            return True
        return False

    def _progress_bar(self):
        if not self.progress:
            return None
        from ..progress import progress_bar

        return progress_bar(self.config.max_steps, initial=self.step, desc="train", unit="step")

    def _after_step(self, metrics: dict[str, float], bar, timesteps: int, seconds: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            bar.update(1)
        if self.step % self.config.log_every == 0 or self.step == 1:
            # Each rank saw its own shard; the log shows the mean (every rank joins in).
            metrics = self.context.mean_over_ranks(metrics)
            record = {"event": "train", "step": self.step, "epoch": self.epoch,
                      "lr": self.scheduler.get_last_lr()[0],
                      "timesteps_per_s": round(timesteps / seconds, 1) if seconds else None,
                      **{k: round(v, 6) for k, v in metrics.items() if math.isfinite(v)}}
            self._log(record)

    def _sum_over_ranks(self, value: int) -> int:
        return int(sum(self.context.all_gather_object(value)))


def _private_generator() -> torch.Generator:
    """A generator for DataLoader's worker base seed.

    Without one, every ``iter(loader)`` draws from the global RNG, so a resumed run (which
    creates its loader at a different moment) would shift every later dropout mask.
    """
    return torch.Generator().manual_seed(0)
