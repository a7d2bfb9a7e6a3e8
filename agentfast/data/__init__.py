"""Agent logs to embedded, padded training batches.

Read logs (episodes, OpenAI chat and preference records, ShareGPT, ChatGPT's
``conversations.json``; as JSONL, JSON arrays or Parquet) into validated ``Episode`` records
with a report of everything left out or transformed, embed their texts with a Hugging Face encoder (cached on
disk), and batch them with ``EpisodeDataset`` and ``collate_episodes``; ``prepare_data``
does all of it for the splits of ``DataSettings`` with the encoder of ``EncoderSettings``.
Importing this package does not import transformers; the encoder does, when it is built.
"""

from .cache import CachedEncoder, EmbeddingCache, default_cache_dir
from .dataset import (
    IGNORE_INDEX,
    EpisodeDataset,
    Vocabulary,
    collate_episodes,
    discounted_returns,
    episode_returns_to_go,
    make_dataloader,
    split_by_task_type,
    termination_targets,
    train_val_split,
    visibility_matrix,
    window_starts,
)
from .encoders import TextEncoder, default_encoder_path, pool
from .preparation import MemoEncoder, PreparedData, build_encoder, prepare_data, read_log
from .readers import (
    FORMATS,
    KINDS,
    ReadReport,
    SkippedRecordsWarning,
    convert,
    detect_format,
    load_episodes,
    read_chatgpt_export,
    read_episodes_jsonl,
    read_openai_chat_jsonl,
    read_openai_preference_jsonl,
    read_sharegpt,
    write_episodes_jsonl,
)
from .schema import DataError, Episode, EpisodeValidationError
from .settings import DataSettings, EncoderSettings

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "KINDS",
    "CachedEncoder",
    "DataError",
    "DataSettings",
    "EncoderSettings",
    "MemoEncoder",
    "PreparedData",
    "EmbeddingCache",
    "Episode",
    "EpisodeDataset",
    "EpisodeValidationError",
    "ReadReport",
    "SkippedRecordsWarning",
    "TextEncoder",
    "Vocabulary",
    "build_encoder",
    "collate_episodes",
    "convert",
    "default_cache_dir",
    "default_encoder_path",
    "detect_format",
    "discounted_returns",
    "episode_returns_to_go",
    "load_episodes",
    "make_dataloader",
    "pool",
    "prepare_data",
    "read_chatgpt_export",
    "read_episodes_jsonl",
    "read_log",
    "read_openai_chat_jsonl",
    "read_openai_preference_jsonl",
    "read_sharegpt",
    "split_by_task_type",
    "termination_targets",
    "train_val_split",
    "visibility_matrix",
    "window_starts",
    "write_episodes_jsonl",
]
