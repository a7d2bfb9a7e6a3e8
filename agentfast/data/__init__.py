"""Agent logs to embedded, padded training batches.

Read logs (episodes, OpenAI chat and preference records, ShareGPT, ChatGPT's
``conversations.json``; as JSONL, JSON arrays or Parquet) into validated ``Episode`` records
with a report of everything left out or transformed, embed their texts with a Hugging Face encoder (cached on
disk), and batch them with ``EpisodeDataset`` and ``collate_episodes``; ``prepare_data``
does all of it for the splits of ``DataSettings`` with the encoder of ``EncoderSettings``.
Importing this package imports neither torch nor transformers: each name loads its module
when first used (the encoder imports transformers when it is built).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "CachedEncoder": ".cache",
    "EmbeddingCache": ".cache",
    "default_cache_dir": ".cache",
    "IGNORE_INDEX": ".dataset",
    "EpisodeDataset": ".dataset",
    "Vocabulary": ".dataset",
    "collate_episodes": ".dataset",
    "discounted_returns": ".dataset",
    "episode_agent_labels": ".dataset",
    "episode_returns_to_go": ".dataset",
    "make_dataloader": ".dataset",
    "split_by_task_type": ".dataset",
    "termination_targets": ".dataset",
    "train_val_split": ".dataset",
    "visibility_matrix": ".dataset",
    "window_starts": ".dataset",
    "TextEncoder": ".encoders",
    "default_encoder_path": ".encoders",
    "pool": ".encoders",
    "MemoEncoder": ".preparation",
    "PreparedData": ".preparation",
    "build_encoder": ".preparation",
    "prepare_data": ".preparation",
    "read_log": ".preparation",
    "FORMATS": ".readers",
    "KINDS": ".readers",
    "ReadReport": ".readers",
    "SkippedRecordsWarning": ".readers",
    "convert": ".readers",
    "detect_format": ".readers",
    "load_episodes": ".readers",
    "read_chatgpt_export": ".readers",
    "read_episodes_jsonl": ".readers",
    "read_openai_chat_jsonl": ".readers",
    "read_openai_preference_jsonl": ".readers",
    "read_sharegpt": ".readers",
    "write_episodes_jsonl": ".readers",
    "DataError": ".schema",
    "Episode": ".schema",
    "EpisodeValidationError": ".schema",
    "DataSettings": ".settings",
    "EncoderSettings": ".settings",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
