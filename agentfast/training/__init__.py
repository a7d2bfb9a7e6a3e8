"""Training, evaluation and checkpoints for the three agentfast policies.

``Trainer`` runs the loop (AdamW + warmup/cosine, clipping, AMP, early stopping, resumable
atomic checkpoints, DDP); ``train_policy`` / ``evaluate_policies`` are the end-to-end jobs
behind ``agentfast train`` / ``agentfast evaluate``. Saved policies are read and written by
``agentfast.models`` (``save_pretrained`` / ``load_pretrained``), the data they train on is
prepared by ``agentfast.data``.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "agentfast.models.policy_files",
    "latest_checkpoint": ".checkpoint",
    "TrainConfig": ".config",
    "DistributedContext": ".distributed",
    "ResumableSampler": ".distributed",
    "init_distributed": ".distributed",
    "EvaluationReport": ".evaluation",
    "format_table": ".evaluation",
    "compute_losses": ".losses",
    "discrete_action_loss": ".losses",
    "embedding_loss": ".losses",
    "option_loss": ".losses",
    "termination_labels": ".losses",
    "termination_loss": ".losses",
    "value_loss": ".losses",
    "build_model": ".modeling",
    "forward_batch": ".modeling",
    "evaluate_policies": ".run",
    "train_policy": ".run",
    "build_optimizer": ".schedules",
    "warmup_cosine_factor": ".schedules",
    "warmup_cosine_schedule": ".schedules",
    "EarlyStopping": ".trainer",
    "Trainer": ".trainer",
    "TrainResult": ".trainer",
    "MODEL_TYPES": ".config",
}
# Policy files and data preparation moved down a layer; the old names still resolve.
_MOVED = {
    "save_pretrained": "agentfast.models.pretrained",
    "load_pretrained": "agentfast.models.pretrained",
    "PretrainedPolicy": "agentfast.models.pretrained",
    "DataSettings": "agentfast.data.settings",
    "EncoderSettings": "agentfast.data.settings",
    "prepare_data": "agentfast.data.preparation",
}
__getattr__ = lazy_exports(__name__, _EXPORTS, moved=_MOVED)
__all__ = sorted(name for name in _EXPORTS if name != "MODEL_TYPES")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
