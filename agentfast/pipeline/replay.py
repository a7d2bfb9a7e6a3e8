"""Replaying logged episodes through a pipeline: what it would have replied, step by step.

Each state of an episode is one user turn; after every turn the pipeline continues with the
action the agent really took (as the held-out evaluation does), so one wrong reply does not
derail the rest of the episode. A policy sees the episode as it saw its training data: its
own returns-to-go for a policy conditioned on returns, its own visibility for a multi-agent
policy trained with each episode's visibility, unless the caller fixed either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..data.dataset import episode_agent_labels, episode_returns_to_go
from ..data.readers import load_episodes
from ..data.schema import Episode
from ..visibility import FROM_DATA, METADATA_KEY, visibility_from_map
from .agent_pipeline import AgentPipeline


@dataclass(frozen=True)
class ReplayedStep:
    """One step of a replayed episode: the state shown, the reply, the logged action."""

    state: str
    predicted: str
    logged: str

    @property
    def matches(self) -> bool:
        return self.predicted == self.logged


def example_episodes(policy_config: dict[str, Any], count: int,
                     data_path: str | None = None) -> list[Episode]:
    """``count`` episodes of the policy's held-out task types (any type if it held none out),
    spread evenly over the log it was trained on (or ``data_path``)."""
    saved_data = policy_config.get("data", {})
    given = data_path
    data_path = data_path or saved_data.get("path")
    if not data_path:
        raise ValueError("replaying examples needs a data file (the policy does not record its own)")
    if data_path == "-" and given is None:
        raise ValueError("the policy was trained on standard input ('-'), which cannot be read "
                         "again: pass --data")
    held_out = set(saved_data.get("held_out_task_types") or [])
    episodes = [e for e in load_episodes(data_path).episodes if not held_out or e.task_type in held_out]
    if not episodes:
        raise ValueError(f"no episodes to show in {data_path}")
    stride = max(1, len(episodes) // count)
    return episodes[::stride][:count]


def replay_episode(pipeline: AgentPipeline, episode: Episode, policy_config: dict[str, Any], *,
                   fixed_target_return: bool = False,
                   fixed_visibility: bool = False) -> list[ReplayedStep]:
    """Feed ``episode`` through ``pipeline`` from a fresh conversation (see module docstring).

    ``fixed_target_return`` / ``fixed_visibility``: the pipeline was given a target return
    or a visibility on purpose; the episode's own do not replace it.
    """
    pipeline.reset()
    returns = None if fixed_target_return else _own_returns(pipeline, episode, policy_config)
    visibility = None if fixed_visibility else _own_visibility(pipeline, episode)
    # An episode without agents acts as the data set's unnamed agent, as in training.
    agents = episode_agent_labels(episode, pipeline.agent_names) if pipeline.model.uses_agents else None
    steps = []
    for t, (state, action) in enumerate(zip(episode.states, episode.actions)):
        predicted = pipeline.process(state, agent=None if agents is None else agents[t],
                                     agent_mask=visibility,
                                     target_return=None if returns is None else returns[t])
        steps.append(ReplayedStep(state=state, predicted=predicted, logged=action))
        pipeline.replace_last_reply(action)
    return steps


def _own_returns(pipeline: AgentPipeline, episode: Episode,
                 policy_config: dict[str, Any]) -> Sequence[float] | None:
    """The episode's returns-to-go, for a policy conditioned on returns."""
    if pipeline.target_return is None:
        return None
    gamma = float(policy_config.get("data", {}).get("gamma", 0.99))
    return episode_returns_to_go(episode, gamma).tolist()


def _own_visibility(pipeline: AgentPipeline, episode: Episode):
    """The episode's visibility, for a multi-agent policy trained with each episode's own."""
    config = pipeline.model.config
    if not pipeline.model.uses_agents or config.visibility != FROM_DATA:
        return None
    return visibility_from_map(episode.metadata.get(METADATA_KEY), pipeline.agent_names,
                               config.max_num_agents)
