"""End-to-end jobs behind the CLI: data file -> datasets -> trained policy -> evaluation.

``train_policy`` reads a log file, holds out whole task types for evaluation, splits the
rest into train/validation (validation drives early stopping), trains, saves the best
policy with ``save_pretrained`` and evaluates it on the held-out task types next to the
baselines. ``evaluate_policies`` does the evaluation part for saved policies.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .._lazy import moved_names
from ..data.preparation import PreparedData, build_encoder, prepare_data, print_read_report, read_log
from ..data.settings import DataSettings, EncoderSettings
from ..models.policy_files import CheckpointError, read_pretrained_config
from ..models.pretrained import PretrainedPolicy, load_pretrained, save_pretrained
from .checkpoint import checkpoint_root, latest_checkpoint, read_trainer_state
from .config import TrainConfig
from .distributed import DistributedContext
from .evaluation import (
    EvaluationReport,
    collect_steps,
    majority_baseline,
    model_metrics,
    nearest_neighbour_baseline,
    predict_steps,
    seen_action_fraction,
    value_pairs,
)
from .modeling import build_model
from .precision import seed_everything
from .trainer import JsonlLogger, Trainer, TrainResult



# Data and encoder settings, the encoder and data preparation moved to agentfast.data.
__getattr__ = moved_names(__name__, {
    "MemoEncoder": "agentfast.data.preparation",
    "highest_return_to_go": "agentfast.data.preparation",
    "load_report": "agentfast.data.preparation:read_log",
})


def encoder_settings_from_policy(config: dict[str, Any], **overrides: Any) -> EncoderSettings:
    """Deprecated: ``EncoderSettings.from_policy``."""
    warnings.warn("agentfast.training.run.encoder_settings_from_policy moved to "
                  "agentfast.data.EncoderSettings.from_policy; the old name will be removed",
                  DeprecationWarning, stacklevel=2)
    return EncoderSettings.from_policy(config, **overrides)


def resolve_device(device: str, context: DistributedContext | None = None) -> torch.device:
    """``auto`` is cuda (this rank's GPU under torchrun) when available, else cpu."""
    context = context or DistributedContext()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but no CUDA device is available")
        return torch.device("cuda", context.local_rank if context.enabled else 0)
    return torch.device(device)


@dataclass
class TrainOutcome:
    result: TrainResult
    output_dir: Path
    report: EvaluationReport | None
    data_summary: dict[str, Any]


def run_settings(data: DataSettings, episodes: Sequence[Any], encoder: Any) -> dict[str, Any]:
    """What decides a run besides the TrainConfig: the split, windows and returns of the
    data, the episodes themselves (by content, so a moved file still matches) and the
    encoder. Saved with every training checkpoint and compared on resume."""
    return {
        "held_out_task_types": sorted(data.held_out_task_types),
        "val_fraction": data.val_fraction, "window_stride": data.window_stride,
        "gamma": data.gamma, "split_seed": data.split_seed,
        "episodes": episodes_fingerprint(episodes), "encoder": encoder.identity,
    }


def episodes_fingerprint(episodes: Sequence[Any]) -> str:
    """A content hash of the episodes, in order. Where a reader noted each record's origin
    (``metadata["source"]``: file name and line) it is left out, so the same logs under
    another name still match."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for episode in episodes:
        record = episode.to_dict()
        if isinstance(record.get("metadata"), dict):
            record["metadata"] = {k: v for k, v in record["metadata"].items() if k != "source"}
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return f"{len(episodes)} episodes, sha256 {digest.hexdigest()[:16]}"


_RESUME_MUTABLE = {"log_every"}  # settings a resumed run may change


def _check_resume(checkpoint: Path, config: TrainConfig, settings: dict[str, Any]) -> None:
    """A resumed run must use the settings it started with (else the math changes)."""
    state = read_trainer_state(checkpoint)
    differing = _differences(state.get("train_config", {}), config.to_dict())
    differing += _differences(state.get("run_settings", {}), settings)
    if differing:
        raise ValueError(f"cannot resume {checkpoint} with different settings "
                         f"({'; '.join(differing)}); use the settings it started with, or "
                         "start over with --overwrite")


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``name: checkpoint X vs now Y`` for each setting that changed (checkpoints from
    before a setting was saved do not know it, so it is not compared)."""
    return [f"{name}: checkpoint {saved[name]!r} vs now {value!r}" for name, value in now.items()
            if name not in _RESUME_MUTABLE and name in saved and saved[name] != value]


def train_policy(config: TrainConfig, data: DataSettings, encoder_settings: EncoderSettings,
                 output_dir: str | os.PathLike, *, resume: bool = False, device: str = "auto",
                 context: DistributedContext | None = None, progress: bool = True,
                 log_path: str | os.PathLike | None = None, stop_after_step: int | None = None,
                 evaluate: bool = True, episodes: Sequence[Any] | None = None,
                 encoder: Any | None = None, overwrite: bool = False,
                 tensorboard: bool = True) -> TrainOutcome:
    """Train one policy on a log file and save it to ``output_dir`` (see module docstring).

    ``resume`` continues from the latest checkpoint in ``output_dir`` if the TrainConfig,
    data settings, episodes and encoder are the ones it was written with (``run_settings``);
    with no checkpoint there it says so and starts a fresh run. ``tensorboard``: TensorBoard
    event files in ``output_dir`` too (when the tensorboard package is installed).
    """
    context = context or DistributedContext()
    if context.enabled and episodes is None and data.path == "-":
        raise ValueError("standard input ('-') reaches one process only: under torchrun, "
                         "pass the data as a file")
    output_dir = Path(output_dir)
    old_run: list[str] = []
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None and context.is_main:
            print(f"no checkpoint in {checkpoint_root(output_dir)} to resume from; "
                  "starting a fresh run")
    else:
        old_run = _check_fresh_output(output_dir, overwrite, context)
    torch_device = resolve_device(device, context)
    log_path = log_path or output_dir / "train_log.jsonl"
    read_errors: list[str] = []
    if episodes is None:
        report = read_log(data, progress=progress and context.is_main)  # one bar, not one per rank
        if context.is_main:
            read_errors = print_read_report(report)
        episodes = report.episodes
    encoder = encoder or build_encoder(encoder_settings, progress=progress)
    settings = run_settings(data, episodes, encoder)
    if checkpoint is not None:  # before the embedding, the slow part
        _check_resume(checkpoint, config, settings)
    policy_settings = config.policy_settings()
    prepared = prepare_data(episodes, encoder, data, policy_settings["max_seq_len"], progress=progress,
                            context=context)
    if context.is_main:
        print(_describe_split(prepared.summary))
    seed_everything(config.seed)  # identical initial weights on every rank
    action_dim = len(prepared.vocab["action"]) if policy_settings["discrete_actions"] else prepared.action_dim
    model = build_model(config, state_dim=prepared.state_dim, action_dim=action_dim,
                        num_agents=prepared.num_agents, num_options=max(1, prepared.num_options))
    trainer = Trainer(model, config, prepared.train, prepared.val, output_dir=output_dir,
                      device=torch_device, context=context,
                      log_path=log_path, progress=progress,
                      stop_after_step=stop_after_step,
                      run_settings=settings, tensorboard_dir=output_dir if tensorboard else None)
    # Everything that can refuse the run has run by now; only then may the old one go.
    if old_run:
        _delete_old_run(output_dir, context)
    if context.is_main:
        JsonlLogger(log_path).log({"event": "data", **prepared.summary,
                                   "skipped": len(read_errors), "errors": read_errors})
    result = trainer.train(resume=checkpoint or False)
    metadata = {
        "train_config": config.to_dict(),
        # An absolute data path, so `agentfast evaluate` works from any directory.
        "data": {**asdict(data), "path": data.path if data.path == "-" else str(Path(data.path).resolve()),
                 **{k: prepared.summary[k] for k in ("task_types", "actions", "max_return_to_go")}},
        "encoder": {"settings": encoder_settings.saved(), "identity": encoder.identity,
                    "dim": int(encoder.dim)},
        "training": {"steps": result.steps, "stopped_early": result.stopped_early,
                     "best_val_loss": result.best_val_loss, "best_step": result.best_step,
                     "timesteps_per_second": round(result.timesteps_per_second, 1),
                     "world_size": context.world_size, "precision": trainer.precision},
    }
    outcome = TrainOutcome(result=result, output_dir=output_dir, report=None,
                           data_summary=prepared.summary)
    if result.stopped_by_request:
        return outcome
    if context.is_main:
        save_pretrained(output_dir, model, model_type=config.model_type, metadata=metadata,
                        vocab=prepared.vocab, action_bank=prepared.action_bank)
    context.barrier()
    if evaluate and context.is_main and prepared.held_out is not None:
        policy = load_pretrained(output_dir, device=torch_device)
        outcome.report = evaluate_prepared([policy], prepared, device=torch_device)
    return outcome


_RUN_FILES = ("config.json", "model.safetensors", "vocab.json", "action_bank.safetensors",
              "train_log.jsonl")
_EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's


def _old_run_files(output_dir: Path) -> list[str]:
    existing = [name for name in _RUN_FILES if (output_dir / name).exists()]
    if any(output_dir.glob(_EVENT_FILES)):
        existing.append("TensorBoard event files")
    if checkpoint_root(output_dir).exists():
        existing.append("checkpoints/")
    return existing


def _check_fresh_output(output_dir: Path, overwrite: bool, context: DistributedContext) -> list[str]:
    """The files of an earlier run in ``output_dir`` (a fresh run must not mix with its
    checkpoints and log); without ``overwrite`` they are an error.

    Rank 0 looks and every rank uses its answer: a rank that looked after rank 0 had
    deleted the old run would otherwise skip the barrier of ``_delete_old_run``.
    """
    existing = context.broadcast_object(_old_run_files(output_dir) if context.is_main else None)
    if existing and not overwrite:
        raise ValueError(f"{output_dir} already holds a run ({', '.join(existing)}); pass "
                         "--resume to continue it or --overwrite to start over")
    return existing


def _delete_old_run(output_dir: Path, context: DistributedContext) -> None:
    """Rank 0 deletes the earlier run; the barrier keeps the others from writing meanwhile."""
    if context.is_main:
        import shutil

        shutil.rmtree(checkpoint_root(output_dir), ignore_errors=True)
        for name in _RUN_FILES:
            (output_dir / name).unlink(missing_ok=True)
        for path in output_dir.glob(_EVENT_FILES):
            path.unlink()
    context.barrier()


def _describe_split(summary: dict[str, Any]) -> str:
    held = summary["held_out_task_types"]
    return (f"{summary['train_episodes']} train / {summary['val_episodes']} validation / "
            f"{summary['held_out_episodes']} held-out episodes"
            f"{' (held-out task types: ' + ', '.join(held) + ')' if held else ''}; "
            f"{summary['actions']} distinct actions, {summary['agents']} agents, "
            f"{summary['options']} options")


def policy_label(policy: PretrainedPolicy) -> str:
    label = type(policy.model).__name__
    if policy.model.config.discrete_actions:
        label += " (discrete)"
    return label


def policy_labels(policies: Sequence[PretrainedPolicy]) -> list[str]:
    """``policy_label`` of each, followed by its directory where two would share a label."""
    labels = [policy_label(p) for p in policies]
    return [f"{label} ({policy.directory})" if labels.count(label) > 1 else label
            for label, policy in zip(labels, policies)]


def evaluate_prepared(policies: Sequence[PretrainedPolicy], prepared: PreparedData, *,
                      device: torch.device | str = "cpu", batch_size: int = 64) -> EvaluationReport:
    """Baselines and every policy on ``prepared.held_out``, in one report."""
    if prepared.held_out is None:
        raise ValueError("there is no held-out data to evaluate on (name --held-out-task-types)")
    train_steps = collect_steps(prepared.train, batch_size)
    held_steps = collect_steps(prepared.held_out, batch_size)
    bank = prepared.action_bank
    report = EvaluationReport(held_out_task_types=sorted(set(held_steps.task_types)),
                              held_out_steps=len(held_steps), bank_size=int(bank.shape[0]),
                              seen_action_fraction=seen_action_fraction(train_steps, held_steps),
                              option_labels=list(prepared.vocab.get("option", [])))
    report.add("majority baseline", majority_baseline(train_steps, held_steps, bank), baseline=True)
    report.add("nearest-neighbour baseline", nearest_neighbour_baseline(train_steps, held_steps, bank),
               baseline=True)
    for label, policy in zip(policy_labels(policies), policies):
        metrics, pairs = _evaluate(policy, prepared.held_out, bank, device=device, batch_size=batch_size)
        report.add(label, metrics, value_pairs=pairs)
    return report


def evaluate_policy(policy: PretrainedPolicy, dataset: Any, bank: torch.Tensor, *,
                    device: torch.device | str = "cpu", batch_size: int = 64) -> dict[str, Any]:
    return _evaluate(policy, dataset, bank, device=device, batch_size=batch_size)[0]


def _evaluate(policy: PretrainedPolicy, dataset: Any, bank: torch.Tensor, *, device: torch.device | str,
              batch_size: int) -> tuple[dict[str, Any], tuple[list[float], list[float]] | None]:
    """The policy's metrics and its (value, return) pairs."""
    model = policy.model.to(device)
    _check_dataset_fits(policy, dataset)
    records, predictions = predict_steps(model, dataset, device=device, batch_size=batch_size)
    agent_labels = dataset.agent_vocab.labels if model.uses_agents else None
    metrics = model_metrics(records, predictions, bank, discrete=model.discrete_actions,
                            agent_labels=agent_labels)
    return metrics, value_pairs(records, predictions)


def _check_dataset_fits(policy: PretrainedPolicy, dataset: Any) -> None:
    """The data's sizes must fit the policy's: the same state width, and no more agents or
    options than it knows."""
    config = policy.model.config
    sizes = {"state_dim": dataset.state_dim, "num_agents": dataset.num_agents,
             "num_options": dataset.num_options}
    for f in dataclasses.fields(config):
        source, known = f.metadata.get("from_data"), config[f.name]
        if source == "state_dim" and sizes[source] != known:
            raise CheckpointError(
                f"policy {policy.directory} expects {known}-dim states but the encoder "
                f"gives {sizes[source]}; evaluate with the encoder it was trained with")
        if source in ("num_agents", "num_options") and sizes[source] > known:
            raise CheckpointError(
                f"the data has {sizes[source]} {source.removeprefix('num_')} but policy "
                f"{policy.directory} knows {known}")


def evaluate_policies(directories: Sequence[str | os.PathLike], *, data_path: str | None = None,
                      held_out_task_types: Sequence[str] | None = None,
                      encoder_settings: EncoderSettings | None = None, device: str = "auto",
                      progress: bool = True, batch_size: int = 64) -> EvaluationReport:
    """Evaluate saved policies (trained on the same data and encoder) against the baselines.

    The data file, held-out task types, split and encoder default to what the first policy
    was trained with, so ``agentfast evaluate runs/a runs/b`` needs nothing else.
    """
    if not directories:
        raise ValueError("name at least one policy directory")
    configs = [read_pretrained_config(d) for d in directories]
    first = configs[0]
    data = DataSettings.from_policy(first, path=data_path, held_out_task_types=None
                                    if held_out_task_types is None else list(held_out_task_types))
    if not data.path:
        raise ValueError("no data file: pass --data")
    if data.path == "-" and data_path is None:
        raise ValueError("the policy was trained on standard input ('-'), which cannot be read "
                         "again: pass --data")
    identities = {c.get("encoder", {}).get("identity") for c in configs}
    if len(identities) > 1 and encoder_settings is None:
        raise CheckpointError("these policies were trained with different encoders; "
                              "evaluate them separately")
    settings = encoder_settings or EncoderSettings.from_policy(first)
    encoder = build_encoder(settings, progress=progress)
    torch_device = resolve_device(device)
    policies = [load_pretrained(d, device=torch_device) for d in directories]
    report_data = read_log(data, progress=progress)
    print_read_report(report_data)
    max_len = min(int(p.config["model_config"]["max_seq_len"]) for p in policies)
    vocab = _vocab_from_policy(policies[0])
    prepared = prepare_data(report_data.episodes, encoder, data, max_len, vocab=vocab,
                            progress=progress)
    return evaluate_prepared(policies, prepared, device=torch_device, batch_size=batch_size)


def _vocab_from_policy(policy: PretrainedPolicy) -> dict[str, list[str]]:
    return {k: list(v) for k, v in policy.vocab.items() if k in ("action", "agent", "option")}
