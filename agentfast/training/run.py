"""End-to-end jobs behind the CLI: data file -> datasets -> trained policy -> evaluation.

``train_policy`` reads a log file, holds out whole task types for evaluation, splits the
rest into train/validation (validation drives early stopping), trains, saves the best
policy with ``save_pretrained`` and evaluates it on the held-out task types next to the
baselines. ``evaluate_policies`` does the evaluation part for saved policies.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import (
    CheckpointError,
    PretrainedPolicy,
    checkpoint_root,
    latest_checkpoint,
    load_pretrained,
    read_pretrained_config,
    save_pretrained,
)
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
)
from .modeling import build_model, check_model_options, visibility_mask
from .precision import seed_everything
from .trainer import JsonlLogger, Trainer, TrainResult

MODEL_LABELS = {"action": "ActionTransformer", "multi_agent": "MultiAgentTransformer",
                "hierarchical": "HierarchicalTransformer"}


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


class MemoEncoder:
    """Remembers every text it embedded in this process, so the train, validation and
    held-out datasets share one pass over the encoder."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._memo: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def identity(self) -> str:
        return self.encoder.identity

    def encode(self, texts: Sequence[str], *, progress: bool = True) -> torch.Tensor:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            self._memo.update(zip(missing, self.encoder.encode(missing, progress=progress)))
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self._memo[t] for t in texts]).float()


def build_encoder(settings: EncoderSettings, *, progress: bool = True) -> MemoEncoder:
    """The text encoder of ``settings``, with the on-disk cache unless it is turned off.

    With the cache, the encoder loads only when some text is not cached yet (a local
    encoder is named by its files). ``progress=False`` also silences transformers'
    messages while it loads.
    """
    from ..data import CachedEncoder, TextEncoder

    cached = settings.cache_dir != ""
    encoder: Any = TextEncoder(settings.name_or_path, pooling=settings.pooling,
                               normalize=settings.normalize, max_length=settings.max_length,
                               batch_size=settings.batch_size, device=_encoder_device(settings.device),
                               lazy=cached, verbose=progress)
    if cached:
        encoder = CachedEncoder(encoder, settings.cache_dir or None)
    return MemoEncoder(encoder)


def _encoder_device(name: str) -> torch.device:
    """``auto`` is cuda when available (the current device, which each torchrun rank sets to
    its own), else cpu. Embeddings come back on the CPU either way."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"encoder device {name!r} is not a device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"encoder device {name!r} was asked for but no CUDA device is available")
    return device


def encoder_settings_from_policy(config: dict[str, Any], **overrides: Any) -> EncoderSettings:
    saved = dict(config.get("encoder", {}).get("settings", {}))
    saved.update({k: v for k, v in overrides.items() if v is not None})
    return EncoderSettings(**saved)


@dataclass
class PreparedData:
    train: Any
    val: Any | None
    held_out: Any | None
    vocab: dict[str, list[str]]
    action_bank: torch.Tensor
    state_dim: int
    action_dim: int
    num_agents: int
    num_options: int
    summary: dict[str, Any]


def load_report(settings: DataSettings):
    from ..data import load_episodes

    path = Path(settings.path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return load_episodes(path, format=settings.format, strict=settings.strict)


def print_read_report(report: Any) -> list[str]:
    """The read's summary, then every record a lenient read skipped, one line each on stderr;
    returns those lines for the JSONL log."""
    print(report.summary(first_error=False))
    lines = [str(error) for error in report.errors]
    for line in lines:
        print(f"skipped {line}", file=sys.stderr)
    return lines


def prepare_data(episodes: Sequence[Any], encoder: Any, settings: DataSettings, max_seq_len: int,
                 *, vocab: dict[str, list[str]] | None = None, progress: bool = True,
                 context: DistributedContext | None = None) -> PreparedData:
    """Split, embed and window the episodes.

    Vocabularies (actions, agents, options) come from ``vocab`` (a saved policy's) or are
    built from all episodes, held-out ones included, so every split shares one id space and
    the action bank holds every known action.
    """
    from ..data import EpisodeDataset, Vocabulary, split_by_task_type, train_val_split

    context = context or DistributedContext()
    episodes = list(episodes)
    if not episodes:
        raise ValueError(f"no episodes in {settings.path}")
    if settings.held_out_task_types:
        rest, held_out = split_by_task_type(episodes, settings.held_out_task_types)
    else:
        rest, held_out = episodes, []
    train, val = train_val_split(rest, settings.val_fraction, settings.split_seed)
    common = dict(max_seq_len=max_seq_len, gamma=settings.gamma)
    vocab_args = {}
    if vocab:
        vocab_args = {f"{key}_vocab": Vocabulary(vocab[key]) for key in ("action", "agent", "option")
                      if key in vocab}
    # Rank 0 embeds first (filling the on-disk cache); the others then read it.
    if context.enabled and not context.is_main:
        context.barrier()
    everything = EpisodeDataset(episodes, encoder, progress=progress and context.is_main,
                                **vocab_args, **common)
    if context.enabled and context.is_main:
        context.barrier()
    shared = dict(action_vocab=everything.action_vocab, agent_vocab=everything.agent_vocab,
                  option_vocab=everything.option_vocab, progress=False)
    train_set = EpisodeDataset(train, encoder, window_stride=settings.window_stride, **shared, **common)
    val_set = EpisodeDataset(val, encoder, **shared, **common) if val else None
    held_set = EpisodeDataset(held_out, encoder, **shared, **common) if held_out else None
    summary = {
        "episodes": len(episodes), "train_episodes": len(train), "val_episodes": len(val),
        "held_out_episodes": len(held_out), "task_types": everything.task_types,
        "held_out_task_types": list(settings.held_out_task_types),
        "actions": everything.num_actions, "agents": everything.num_agents,
        "options": everything.num_options,
        "max_return_to_go": highest_return_to_go(train, settings.gamma),
    }
    return PreparedData(
        train=train_set, val=val_set, held_out=held_set,
        vocab={"action": everything.action_vocab.labels, "agent": everything.agent_vocab.labels,
               "option": everything.option_vocab.labels},
        action_bank=everything.action_bank, state_dim=everything.state_dim,
        action_dim=everything.action_dim, num_agents=everything.num_agents,
        num_options=everything.num_options, summary=summary)


def highest_return_to_go(episodes: Sequence[Any], gamma: float) -> float:
    """The highest return-to-go of any step (no rewards count as zeros, as in training):
    the default target return of a policy conditioned on returns."""
    from ..data import episode_returns_to_go

    return max(float(episode_returns_to_go(e, gamma).max()) for e in episodes)


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
    from .checkpoint import read_trainer_state

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
                 encoder: Any | None = None, overwrite: bool = False) -> TrainOutcome:
    """Train one policy on a log file and save it to ``output_dir`` (see module docstring).

    ``resume`` continues from the latest checkpoint in ``output_dir`` if the TrainConfig,
    data settings, episodes and encoder are the ones it was written with (``run_settings``);
    with no checkpoint there it says so and starts a fresh run.
    """
    context = context or DistributedContext()
    output_dir = Path(output_dir)
    check_model_options(config)
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
        report = load_report(data)
        if context.is_main:
            read_errors = print_read_report(report)
        episodes = report.episodes
    encoder = encoder or build_encoder(encoder_settings, progress=progress)
    settings = run_settings(data, episodes, encoder)
    if checkpoint is not None:  # before the embedding, the slow part
        _check_resume(checkpoint, config, settings)
    prepared = prepare_data(episodes, encoder, data, config.max_seq_len, progress=progress,
                            context=context)
    if context.is_main:
        print(_describe_split(prepared.summary))
    seed_everything(config.seed)  # identical initial weights on every rank
    action_dim = len(prepared.vocab["action"]) if config.discrete_actions else prepared.action_dim
    model = build_model(config, state_dim=prepared.state_dim, action_dim=action_dim,
                        num_agents=prepared.num_agents, num_options=max(1, prepared.num_options))
    trainer = Trainer(model, config, prepared.train, prepared.val, output_dir=output_dir,
                      device=torch_device, context=context,
                      log_path=log_path, progress=progress,
                      stop_after_step=stop_after_step, num_agents=prepared.num_agents,
                      run_settings=settings)
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
        "data": {**asdict(data), "path": str(Path(data.path).resolve()),
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


def _old_run_files(output_dir: Path) -> list[str]:
    existing = [name for name in _RUN_FILES if (output_dir / name).exists()]
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
    context.barrier()


def _describe_split(summary: dict[str, Any]) -> str:
    held = summary["held_out_task_types"]
    return (f"{summary['train_episodes']} train / {summary['val_episodes']} validation / "
            f"{summary['held_out_episodes']} held-out episodes"
            f"{' (held-out task types: ' + ', '.join(held) + ')' if held else ''}; "
            f"{summary['actions']} distinct actions, {summary['agents']} agents, "
            f"{summary['options']} options")


def policy_label(policy: PretrainedPolicy) -> str:
    label = MODEL_LABELS.get(policy.model_type, policy.model_type)
    if policy.config.get("model_config", {}).get("discrete_actions"):
        label += " (discrete)"
    return label


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
                              seen_action_fraction=seen_action_fraction(train_steps, held_steps))
    report.add("majority baseline", majority_baseline(train_steps, held_steps, bank))
    report.add("nearest-neighbour baseline", nearest_neighbour_baseline(train_steps, held_steps, bank))
    for policy in policies:
        report.add(policy_label(policy), evaluate_policy(policy, prepared.held_out, bank,
                                                         device=device, batch_size=batch_size))
    return report


def evaluate_policy(policy: PretrainedPolicy, dataset: Any, bank: torch.Tensor, *,
                    device: torch.device | str = "cpu", batch_size: int = 64) -> dict[str, Any]:
    train_config = policy.config.get("train_config", {})
    discrete = bool(policy.config["model_config"].get("discrete_actions", False))
    visibility = train_config.get("visibility", "data")
    agent_mask = None
    if policy.model_type == "multi_agent":
        agent_mask = visibility_mask(visibility, policy.config["model_config"]["max_num_agents"], device)
    _check_dataset_fits(policy, dataset)
    records, predictions = predict_steps(
        policy.model.to(device), policy.model_type, dataset, discrete=discrete, device=device,
        batch_size=batch_size, agent_mask=agent_mask, visibility_from_data=visibility == "data",
        condition_on_returns=bool(train_config.get("condition_on_returns", False)))
    agent_labels = dataset.agent_vocab.labels if policy.model_type == "multi_agent" else None
    return model_metrics(records, predictions, bank, discrete=discrete, agent_labels=agent_labels)


def _check_dataset_fits(policy: PretrainedPolicy, dataset: Any) -> None:
    config = policy.config["model_config"]
    if dataset.state_dim != config["state_dim"]:
        raise CheckpointError(
            f"policy {policy.directory} expects {config['state_dim']}-dim states but the encoder "
            f"gives {dataset.state_dim}; evaluate with the encoder it was trained with")
    if policy.model_type == "multi_agent" and dataset.num_agents > config["max_num_agents"]:
        raise CheckpointError(
            f"the data has {dataset.num_agents} agents but policy {policy.directory} knows "
            f"{config['max_num_agents']}")
    if policy.model_type == "hierarchical" and dataset.num_options > config["num_options"]:
        raise CheckpointError(
            f"the data has {dataset.num_options} options but policy {policy.directory} knows "
            f"{config['num_options']}")


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
    saved_data = dict(first.get("data", {}))
    saved_data = {k: v for k, v in saved_data.items() if k in DataSettings.__dataclass_fields__}
    data = DataSettings(**{**saved_data, "path": data_path or saved_data.get("path")})
    if held_out_task_types is not None:
        data.held_out_task_types = list(held_out_task_types)
    if not data.path:
        raise ValueError("no data file: pass --data")
    identities = {c.get("encoder", {}).get("identity") for c in configs}
    if len(identities) > 1 and encoder_settings is None:
        raise CheckpointError("these policies were trained with different encoders; "
                              "evaluate them separately")
    settings = encoder_settings or encoder_settings_from_policy(first)
    encoder = build_encoder(settings, progress=progress)
    torch_device = resolve_device(device)
    policies = [load_pretrained(d, device=torch_device) for d in directories]
    report_data = load_report(data)
    print_read_report(report_data)
    max_len = min(int(p.config["model_config"]["max_seq_len"]) for p in policies)
    vocab = _vocab_from_policy(policies[0])
    prepared = prepare_data(report_data.episodes, encoder, data, max_len, vocab=vocab,
                            progress=progress)
    return evaluate_prepared(policies, prepared, device=torch_device, batch_size=batch_size)


def _vocab_from_policy(policy: PretrainedPolicy) -> dict[str, list[str]]:
    return {k: list(v) for k, v in policy.vocab.items() if k in ("action", "agent", "option")}
