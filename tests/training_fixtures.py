"""Small, fast, offline stand-ins for the training, CLI and pipeline tests.

* ``make_episodes``: a synthetic log with learnable structure (the next action is a fixed
  function of the request kind and the step), several task types, two agents, options and
  rewards.
* ``save_tiny_encoder``: a tiny random BERT plus a word-level tokenizer over the log's words,
  saved to a directory, so the real ``TextEncoder`` code path runs without any download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.fake_encoders import HashEncoder, word_tokenizer

KINDS = {
    "fix": ["Reproduce the failure.", "Trace the bad value.", "Apply the fix.", "Run the tests."],
    "build": ["Read the existing code.", "Sketch the interface.", "Write the code.", "Run the tests."],
}
OPTIONS = {"Reproduce the failure.": "investigate", "Trace the bad value.": "investigate",
           "Apply the fix.": "implement", "Run the tests.": "verify",
           "Read the existing code.": "investigate", "Sketch the interface.": "implement",
           "Write the code.": "implement"}
TASK_TYPES = {"debugging": "fix", "performance": "fix", "feature": "build", "tests": "build"}


def make_episode_dicts(per_task_type: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """Episodes as dicts; the action at step t depends only on the kind and t."""
    generator = torch.Generator().manual_seed(seed)
    episodes = []
    for task_type, kind in TASK_TYPES.items():
        for i in range(per_task_type):
            steps = 2 + int(torch.randint(0, 3, (1,), generator=generator))
            actions = KINDS[kind][:steps]
            prefix = "Broken:" if kind == "fix" else "Please build:"
            states = [f"{prefix} {task_type} item {i}"] + [
                f"Result of {task_type} step {t} on item {i}" for t in range(1, steps)]
            record: dict[str, Any] = {
                "states": states, "actions": actions,
                "rewards": [0.0] * (steps - 1) + [1.0],
                "options": [OPTIONS[a] for a in actions],
                "metadata": {"task_type": task_type},
            }
            if i % 2:
                record["agent_ids"] = ["planner" if t % 2 == 0 else "coder" for t in range(steps)]
            episodes.append(record)
    return episodes


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_episodes(per_task_type: int = 6, seed: int = 0) -> list:
    from agentfast.data import Episode

    return [Episode.from_dict(r, source=f"synthetic:{i + 1}")
            for i, r in enumerate(make_episode_dicts(per_task_type, seed))]


def save_tiny_encoder(directory: Path, hidden_size: int = 32) -> Path:
    """A 1-layer random BERT and a word-level tokenizer over the synthetic log's words, saved
    like any Hugging Face model directory."""
    from transformers import BertConfig, BertModel

    texts = [text for record in make_episode_dicts(8) for text in record["states"] + record["actions"]]
    tokenizer = word_tokenizer(texts, model_max_length=128)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


TINY_MODEL = dict(embed_dim=16, num_layers=1, num_heads=2, hidden_dim=32, max_seq_len=4)


def tiny_datasets(per_task_type: int = 4, dim: int = 8, max_seq_len: int = 4):
    """(train, val) EpisodeDatasets of the synthetic log with unit-vector ``HashEncoder`` embeddings."""
    from agentfast.data import EpisodeDataset

    episodes = make_episodes(per_task_type)
    encoder = HashEncoder(dim, normalize=True)
    everything = EpisodeDataset(episodes, encoder, max_seq_len=max_seq_len, progress=False)
    shared = dict(action_vocab=everything.action_vocab, agent_vocab=everything.agent_vocab,
                  option_vocab=everything.option_vocab, max_seq_len=max_seq_len, progress=False)
    train = EpisodeDataset(episodes[::2] + episodes[1::4], encoder, **shared)
    val = EpisodeDataset(episodes[3::4], encoder, **shared)
    return train, val
