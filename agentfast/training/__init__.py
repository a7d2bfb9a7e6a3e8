"""Training, evaluation and checkpoints for the three agentfast policies.

``Trainer`` runs the loop (AdamW + warmup/cosine, clipping, AMP, early stopping, resumable
atomic checkpoints, DDP); ``train_policy`` / ``evaluate_policies`` are the end-to-end jobs
behind ``agentfast train`` / ``agentfast evaluate``. Saved policies are read and written by
``agentfast.models`` (``save_pretrained`` / ``load_pretrained``), the data they train on is
prepared by ``agentfast.data``.
"""

from typing import Any

from .._lazy import moved_names
from ..models.policy_files import CheckpointError
from .checkpoint import latest_checkpoint
from . import config as _config
from .config import TrainConfig
from .distributed import DistributedContext, ResumableSampler, init_distributed
from .evaluation import EvaluationReport, format_table
from .losses import (
    compute_losses,
    discrete_action_loss,
    embedding_loss,
    option_loss,
    termination_labels,
    termination_loss,
    value_loss,
)
from .modeling import build_model, forward_batch
from .run import evaluate_policies, train_policy
from .schedules import build_optimizer, warmup_cosine_factor, warmup_cosine_schedule
from .trainer import EarlyStopping, Trainer, TrainResult

# Policy files and data preparation moved down a layer; the old names still resolve.
_moved = moved_names(__name__, {
    "save_pretrained": "agentfast.models.pretrained",
    "load_pretrained": "agentfast.models.pretrained",
    "PretrainedPolicy": "agentfast.models.pretrained",
    "DataSettings": "agentfast.data.settings",
    "EncoderSettings": "agentfast.data.settings",
    "prepare_data": "agentfast.data.preparation",
})


def __getattr__(name: str) -> Any:
    if name == "MODEL_TYPES":
        return getattr(_config, name)
    return _moved(name)


__all__ = [
    "CheckpointError",
    "DistributedContext",
    "EarlyStopping",
    "EvaluationReport",
    "ResumableSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "build_optimizer",
    "compute_losses",
    "discrete_action_loss",
    "embedding_loss",
    "evaluate_policies",
    "format_table",
    "forward_batch",
    "init_distributed",
    "latest_checkpoint",
    "option_loss",
    "termination_labels",
    "termination_loss",
    "train_policy",
    "value_loss",
    "warmup_cosine_factor",
    "warmup_cosine_schedule",
]
