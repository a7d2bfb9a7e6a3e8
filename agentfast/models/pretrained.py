"""Saving and loading policies of any registered type: ``save_pretrained`` / ``load_pretrained``.

A loaded policy is a ``PretrainedPolicy``: the model (in eval mode) and everything needed to
use it, the labels of its ids and the embeddings of its known actions. The files are those
of ``policy_files``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .policy_files import (
    CheckpointError,
    build_saved_model,
    load_weights,
    read_action_bank,
    read_pretrained_config,
    read_vocab,
    unwrap,
    write_policy,
    WEIGHTS_FILE,
)
from .registry import model_type_of, policy_class


@dataclass
class PretrainedPolicy:
    """A loaded policy: the model and everything needed to use it."""

    model: nn.Module
    model_type: str
    config: dict[str, Any]
    vocab: dict[str, Any]
    action_bank: torch.Tensor | None
    directory: Path

    @property
    def action_texts(self) -> list[str]:
        return list(self.vocab.get("action", []))


def save_pretrained(directory: str | os.PathLike, model: nn.Module, *, model_type: str | None = None,
                    metadata: dict[str, Any] | None = None, vocab: dict[str, Any] | None = None,
                    action_bank: torch.Tensor | None = None) -> Path:
    """Write ``model`` as a policy directory (see ``policy_files``); ``model_type`` defaults
    to the registered name of its class."""
    if model_type is None:
        try:
            model_type = model_type_of(unwrap(model))
        except TypeError as error:
            raise CheckpointError(str(error)) from None
    return write_policy(directory, model, model_type=model_type, metadata=metadata, vocab=vocab,
                        action_bank=action_bank)


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> PretrainedPolicy:
    """Load a directory written by ``save_pretrained`` (weights checked key by key)."""
    directory = Path(directory)
    config = read_pretrained_config(directory)
    try:
        cls = policy_class(config["model_type"])
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    model = build_saved_model(cls, config)
    load_weights(model, directory / WEIGHTS_FILE)
    vocab = read_vocab(directory)
    bank = read_action_bank(directory)
    model.to(device).eval()
    return PretrainedPolicy(model=model, model_type=config["model_type"], config=config, vocab=vocab,
                            action_bank=None if bank is None else bank.to(device), directory=directory)
