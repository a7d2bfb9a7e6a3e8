"""Training, evaluation and checkpoints for the three agentfast policies.

``Trainer`` runs the loop (AdamW + warmup/cosine, clipping, AMP, early stopping, resumable
atomic checkpoints, DDP); ``train_policy`` / ``evaluate_policies`` are the end-to-end jobs
behind ``agentfast train`` / ``agentfast evaluate``; ``save_pretrained`` /
``load_pretrained`` read and write policy directories (safetensors + JSON).
"""

from .checkpoint import (
    CheckpointError,
    PretrainedPolicy,
    latest_checkpoint,
    load_pretrained,
    save_pretrained,
)
from .config import MODEL_TYPES, TrainConfig
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
from .run import (
    DataSettings,
    EncoderSettings,
    evaluate_policies,
    prepare_data,
    train_policy,
)
from .schedules import build_optimizer, warmup_cosine_factor, warmup_cosine_schedule
from .trainer import EarlyStopping, Trainer, TrainResult

__all__ = [
    "MODEL_TYPES",
    "CheckpointError",
    "DataSettings",
    "DistributedContext",
    "EarlyStopping",
    "EncoderSettings",
    "EvaluationReport",
    "PretrainedPolicy",
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
    "load_pretrained",
    "option_loss",
    "prepare_data",
    "save_pretrained",
    "termination_labels",
    "termination_loss",
    "train_policy",
    "value_loss",
    "warmup_cosine_factor",
    "warmup_cosine_schedule",
]
