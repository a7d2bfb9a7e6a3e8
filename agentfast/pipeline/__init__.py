"""Trained policies at work: ``AgentPipeline`` (text in, text out) and episode replay.

``AgentPipeline`` embeds each user input, steps the policy through its KV cache and turns
the predicted action into text; ``replay`` feeds logged episodes through a pipeline and
compares its replies with what the agents really did.
"""

from .agent_pipeline import (
    ActionBank,
    AgentMask,
    AgentPipeline,
    DecodeContext,
    Decoder,
    NearestNeighbourDecoder,
    Prediction,
)
from .replay import ReplayedStep, example_episodes, replay_episode

__all__ = ["ActionBank", "AgentMask", "AgentPipeline", "DecodeContext", "Decoder",
           "NearestNeighbourDecoder", "Prediction", "ReplayedStep", "example_episodes",
           "replay_episode"]
