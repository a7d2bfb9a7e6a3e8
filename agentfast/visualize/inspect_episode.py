"""``agentfast inspect``: the attention maps of a saved policy on one episode of a log.

``episode_attention`` loads the policy, reads and embeds the episode as training did (the
policy's encoder and vocabularies), runs one forward over a window of it under
``TransformerBackbone.capture_attention`` and returns the weights with every token's step,
kind and agent, the mask rule of that forward and, for multi-agent policies, the
visibility matrix it used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..attention.mask import dense_mask
from ..data.dataset import EpisodeDataset, Vocabulary, collate_episodes
from ..data.preparation import build_encoder
from ..data.readers import load_episodes
from ..data.settings import DataSettings, EncoderSettings
from ..models.pretrained import PretrainedPolicy, load_pretrained
from .attention_maps import AttentionMaps, token_stream

_VOCABULARIES = ("action", "agent", "option")


@dataclass
class EpisodeWindow:
    """Steps ``start`` to ``stop - 1`` of episode ``index`` of a log, as one collated batch."""

    batch: dict[str, Any]
    agent_labels: list[str]
    index: int
    start: int
    stop: int
    task_type: str


def episode_attention(policy_dir: str | os.PathLike[str], episodes: str | os.PathLike[str], index: int, *,
                      start: int = 0, steps: int | None = None, data_format: str = "auto",
                      encoder_settings: EncoderSettings | None = None,
                      device: str | torch.device = "cpu", progress: bool = False) -> AttentionMaps:
    """The attention maps of the policy in ``policy_dir`` on episode ``index`` (0-based, in
    file order) of the log ``episodes``, steps ``start`` to ``start + steps - 1`` (default:
    as many as the policy's ``max_seq_len`` allows)."""
    policy = load_pretrained(policy_dir, device=device)
    settings = encoder_settings or EncoderSettings.from_policy(policy.config)
    window = read_episode_window(policy, episodes, index, start=start, steps=steps, data_format=data_format,
                                 encoder_settings=settings, progress=progress)
    return capture_window(policy, window, title=(
        f"{type(policy.model).__name__} ({policy.directory}) on episode {index} ({window.task_type}) "
        f"of {Path(episodes).name}, steps {window.start}-{window.stop - 1}"),
        metadata={"policy": str(policy.directory), "episodes": str(episodes), "episode": index,
                  "task_type": window.task_type, "steps": [window.start, window.stop],
                  "policy_backend": policy.model.attn_backend,
                  "visibility_setting": getattr(policy.model.config, "visibility", None)})


def read_episode_window(policy: PretrainedPolicy, episodes: str | os.PathLike[str], index: int, *,
                        start: int, steps: int | None, data_format: str, encoder_settings: EncoderSettings,
                        progress: bool) -> EpisodeWindow:
    """Episode ``index`` of ``episodes``, embedded with ``encoder_settings`` and the
    policy's vocabularies, cut to the window the policy can take."""
    path = Path(episodes)
    if not path.is_file():
        raise FileNotFoundError(f"episode log not found: {path}")
    read = load_episodes(path, format=data_format)
    if not 0 <= index < len(read.episodes):
        raise ValueError(f"there is no episode {index} in {path}: it holds {len(read.episodes)} "
                         f"episodes, numbered 0 to {len(read.episodes) - 1}")
    episode = read.episodes[index]
    model = policy.model
    if not 0 <= start < len(episode):
        raise ValueError(f"--start {start} is outside episode {index}, which has steps 0 to {len(episode) - 1}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    stop = min(len(episode), start + min(steps or model.max_seq_len, model.max_seq_len))
    vocabularies = {f"{key}_vocab": Vocabulary(policy.vocab[key]) for key in _VOCABULARIES if key in policy.vocab}
    gamma = DataSettings.from_policy(policy.config).gamma
    dataset = EpisodeDataset([episode], build_encoder(encoder_settings, progress=progress),
                             max_seq_len=len(episode), gamma=gamma, progress=progress, **vocabularies)
    _check_policy_knows(policy, dataset)
    item = _cut(dataset[0], start, stop, len(episode))
    batch = {key: value.to(model.state_embed.weight.device) if isinstance(value, torch.Tensor) else value
             for key, value in collate_episodes([item]).items()}
    return EpisodeWindow(batch=batch, agent_labels=dataset.agent_vocab.labels or ["agent 0"], index=index,
                         start=start, stop=stop, task_type=episode.task_type)


def _cut(item: Mapping[str, Any], start: int, stop: int, length: int) -> dict[str, Any]:
    """The item's per-step tensors cut to steps ``start:stop``."""
    return {key: value[start:stop] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == length
            and key != "agent_visibility" else value for key, value in item.items()}


def _check_policy_knows(policy: PretrainedPolicy, dataset: EpisodeDataset) -> None:
    """Ids the episode needs beyond the policy's tables fail here, with names, not in an
    embedding lookup."""
    model = policy.model
    if dataset.state_dim != model.state_dim:
        raise ValueError(f"policy {policy.directory} takes {model.state_dim}-dim states but the encoder gives "
                         f"{dataset.state_dim}; inspect with the encoder it was trained with")
    limits = [("agent", dataset.agent_vocab, getattr(model, "max_num_agents", None)),
              ("option", dataset.option_vocab, getattr(model, "num_options", None))]
    if model.discrete_actions:
        limits.append(("action", dataset.action_vocab, model.action_dim))
    for what, vocab, known in limits:
        if known is not None and len(vocab) > known:
            raise ValueError(f"the episode names {what}s the policy never saw "
                             f"({', '.join(map(repr, vocab.labels[known:]))}); it knows {known}")


def capture_window(policy: PretrainedPolicy, window: EpisodeWindow, *, title: str,
                   metadata: dict[str, Any]) -> AttentionMaps:
    """One forward over ``window`` with the weights of every layer captured."""
    model = policy.model
    model.eval()
    with torch.no_grad(), model.backbone.capture_attention() as captured:
        model.forward_batch(window.batch)
    kinds = model.token_kinds()
    step_agents = window.batch["agent_ids"][0].cpu()
    token_agents = step_agents.repeat_interleave(len(kinds))
    visibility = model.batch_visibility(window.batch) if model.uses_agents else None
    if visibility is not None:
        visibility = (visibility if visibility.dim() == 3 else visibility[None]).cpu()
    num_tokens = len(token_agents)
    allowed = dense_mask(1, num_tokens, num_tokens, torch.device("cpu"), causal=True,
                         agent_ids=None if visibility is None else token_agents[None],
                         visibility=visibility)[0, 0]
    present = sorted(set(step_agents.tolist()))
    labels = [window.agent_labels[i] for i in present]
    shown_visibility = None
    if model.uses_agents:
        full = torch.ones(1, model.max_num_agents, model.max_num_agents, dtype=torch.bool)
        shown_visibility = (full if visibility is None else visibility)[0][present][:, present].numpy()
    tokens = token_stream(kinds, range(window.start, window.stop), [window.agent_labels[i] for i in step_agents])
    return AttentionMaps.from_capture(captured, allowed=allowed.numpy(), tokens=tokens, agents=labels,
                                      visibility=shown_visibility, title=title, metadata=metadata)
