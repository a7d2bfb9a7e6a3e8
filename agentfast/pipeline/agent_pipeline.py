"""``AgentPipeline``: text in, text out, with a trained policy.

The pipeline embeds the user's input with the policy's encoder, runs one step of the
policy with its KV cache (so a conversation costs one step per turn, not a re-read of the
whole history), ranks the bank of known actions against the predicted action embedding
(or logits), and lets a decoder (``agentfast.decoders``) turn that into the reply: by
default the nearest known action; "openai" or "hf" have a language model write the reply
from the conversation and the ranked actions. An embedding does not contain a sentence
(sending it to a chat API "to convert it to text" cannot work), but it does say which known
actions it is closest to.

Users who bring their own generator plug in any callable
``decoder(prediction, context) -> str | Reply`` (see ``agentfast.decoders.DecodeContext``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.preparation import build_encoder
from ..data.settings import EncoderSettings
from ..decoders import DecodeContext, Decoder, NearestNeighbourDecoder, Reply, make_decoder
from ..models.policy_files import CheckpointError
from ..models.pretrained import load_pretrained
from ..models.registry import model_type_of
from ..visibility import as_visibility, setting_visibility

__all__ = ["ActionBank", "AgentPipeline", "DecodeContext", "Decoder", "NearestNeighbourDecoder",
           "Prediction"]


class ActionBank:
    """Known action texts and their embeddings; ``nearest`` ranks them by cosine."""

    def __init__(self, texts: Sequence[str], embeddings: Tensor) -> None:
        if len(texts) == 0:
            raise ValueError("the action bank is empty")
        if embeddings.dim() != 2 or embeddings.shape[0] != len(texts):
            raise ValueError(f"action bank: {len(texts)} texts but embeddings of shape "
                             f"{tuple(embeddings.shape)}")
        self.texts = list(texts)
        self.embeddings = embeddings.float()
        self._normalised = F.normalize(self.embeddings, dim=-1)
        self._index = {text: i for i, text in enumerate(self.texts)}

    def __len__(self) -> int:
        return len(self.texts)

    def index(self, text: str) -> int | None:
        return self._index.get(text)

    def nearest(self, embedding: Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most similar actions to ``embedding`` [D], best first, with cosine."""
        scores = self._normalised @ F.normalize(embedding.float().cpu(), dim=-1)
        top = scores.topk(min(k, len(self.texts)))
        return [(self.texts[i], float(s)) for s, i in zip(top.values, top.indices)]

    def by_logits(self, logits: Tensor, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable actions of a discrete policy, with probabilities."""
        probs = logits.float().cpu().softmax(-1)
        top = probs.topk(min(k, probs.shape[-1], len(self.texts)))
        return [(self.texts[i], float(p)) for p, i in zip(top.values, top.indices)]


# Multi-agent visibility: a bool [A, A] matrix (row = the viewer), a preset name ("full",
# "private", "hub"), or {agent: [agents it sees]} by name as in episodes' metadata.
AgentMask = Union[Tensor, str, Mapping[Any, Sequence[Any]]]


@dataclass
class Prediction:
    """The last turn in detail: chosen text, ranked candidates, value, option, and the
    decoder's ``Reply`` (who wrote the text; ``reply.fallback`` says why a generator's
    failure was answered with the nearest known action)."""

    text: str
    candidates: list[tuple[str, float]]
    raw: Tensor | None = None  # the policy's output: action embedding, or logits if discrete
    value: float | None = None
    option: str | None = None
    reply: Reply | None = None


@dataclass
class _Turn:
    state: Tensor  # [Ds]
    agent: int
    action: Tensor | None = None  # model input for the action: [Da] float or [] long
    return_to_go: float | None = None  # asked of a policy conditioned on returns


class AgentPipeline:
    """Encoder + policy + action bank, used as ``pipeline.process(user_input) -> str``.

    Args:
        encoder: anything with ``encode(texts, progress=False) -> [N, Ds]`` (a TextEncoder).
        model: an ActionTransformer, MultiAgentTransformer or HierarchicalTransformer.
        bank: the known actions (texts and embeddings of the encoder's space).
        decoder: turns the prediction into the reply: "retrieval" (the nearest known
            action; the default), "openai" (a chat-completions endpoint writes it), "hf" (a
            local Hugging Face causal LM writes it), or any callable ``(prediction,
            DecodeContext) -> str | Reply`` such as ``agentfast.decoders.OpenAIChatDecoder``.
        decoder_options: the settings of a decoder given by name (the keyword arguments
            of ``OpenAIChatDecoder`` / ``HFGeneratorDecoder``, e.g. ``{"model": ...}``).
        agent: the acting agent (id or name from ``agent_names``) for multi-agent policies.
        agent_names, option_names: labels of the policy's agent and option ids.
        agent_mask: multi-agent visibility of the conversation: a bool ``[A, A]`` matrix
            (row = the viewer), a preset ("full", "private", "hub"), or ``{agent: [agents
            it sees]}`` by name as in an episode's ``metadata["visibility"]`` (agents not
            listed see everyone). None: everyone sees everyone.
        top_k: how many candidates to rank for the decoder and ``last``.
        target_return: the return-to-go asked of an ActionTransformer trained on returns
            (``--condition-on-returns``); None for any other policy. It stays the same
            from turn to turn (no rewards are observed here); ``process(...,
            target_return=...)`` sets it for one turn. ``from_pretrained`` defaults it to
            the highest return-to-go of the policy's training data.

    Conversation state: ``process`` continues the pipeline's running conversation (one
    policy step per turn, through the KV cache); ``history=[(user, reply), ...]`` replaces
    it first, ``reset()`` clears it. When the policy's context is full the oldest turns are
    dropped and the cache is rebuilt from the rest.
    """

    def __init__(self, encoder: Any, model: nn.Module, bank: ActionBank, *,
                 decoder: str | Decoder | Callable[[Tensor, DecodeContext], str] | None = None,
                 decoder_options: Mapping[str, Any] | None = None,
                 agent: int | str = 0, agent_names: Sequence[str] | None = None,
                 option_names: Sequence[str] | None = None, agent_mask: AgentMask | None = None,
                 top_k: int = 5, target_return: float | None = None) -> None:
        self.encoder = encoder
        self.model = model.eval()
        self.bank = bank
        self.decoder = _build_decoder(decoder, decoder_options)
        self.agent_names = list(agent_names or [])
        self.option_names = list(option_names or [])
        self.top_k = top_k
        self.model_type = model_type_of(model)
        self.discrete = bool(getattr(model, "discrete_actions", False))
        self.device = next(model.parameters()).device
        self._check_dims()
        self.agent = self._agent_id(agent)
        self.agent_mask = self._visibility(agent_mask)
        self.target_return = self._return_to_go(target_return)
        self.last: Prediction | None = None
        self._turns: list[_Turn] = []
        self._texts: list[tuple[str, str]] = []
        self._cache = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, encoder: Any | None = None,
                        device: str | torch.device = "cpu", agent_mask: AgentMask | None = None,
                        **kwargs: Any) -> "AgentPipeline":
        """Load a policy saved by ``agentfast train`` with the encoder it was trained with.

        ``encoder`` overrides the saved encoder (it must produce vectors of the same size,
        and should be the same model, or retrieval is meaningless). A policy trained with
        ``--condition-on-returns`` gets ``target_return`` (default: the highest
        return-to-go of its training data; a policy saved without that record is stepped
        without one, with a warning); any other policy refuses one.

        A multi-agent policy sees with ``agent_mask`` if given, else with the preset it was
        trained with. A policy trained with ``visibility="data"`` learned each episode's
        own ``metadata["visibility"]``; with no ``agent_mask`` it gets full visibility
        (every agent sees every other, as for episodes without that metadata), so pass the
        conversation's visibility when it is narrower.

        Other keyword arguments are the constructor's, e.g. ``decoder="openai",
        decoder_options={"model": "gpt-4o-mini"}`` to have a chat model write the replies.
        """
        policy = load_pretrained(directory, device=device)
        if policy.action_bank is None:
            raise CheckpointError(f"{directory} has no action bank; it cannot decode actions")
        if encoder is None:
            # No loading progress bars: they would only clutter the replies.
            encoder = build_encoder(EncoderSettings.from_policy(policy.config, cache_dir=""),
                                    progress=False)
        saved_identity = policy.config.get("encoder", {}).get("identity")
        if saved_identity and getattr(encoder, "identity", saved_identity) != saved_identity:
            warnings.warn(f"the encoder differs from the one {directory} was trained with; "
                          "predictions may be meaningless", stacklevel=2)
        if agent_mask is None and policy.model.uses_agents:
            config = policy.model.config
            agent_mask = setting_visibility(config.visibility, config.max_num_agents, device)
        kwargs["target_return"] = _saved_target_return(policy, kwargs.get("target_return"))
        return cls(encoder, policy.model, ActionBank(policy.action_texts, policy.action_bank.cpu()),
                   agent_names=policy.vocab.get("agent"), option_names=policy.vocab.get("option"),
                   agent_mask=agent_mask, **kwargs)

    def _check_dims(self) -> None:
        config = getattr(self.model, "config", {})
        state_dim = config.get("state_dim")
        if state_dim is not None and int(self.encoder.dim) != int(state_dim):
            raise ValueError(f"the encoder gives {self.encoder.dim}-dim vectors but the policy "
                             f"expects {state_dim}-dim states")
        if self.discrete and config.get("action_dim", len(self.bank)) > len(self.bank):
            raise ValueError("a discrete policy needs a bank text for each of its action ids")

    def _return_to_go(self, value: float | None) -> float | None:
        if value is None:
            return None
        if not self.model.uses_returns:
            raise ValueError(f"target_return conditions a policy on returns-to-go; a {self.model_type} "
                             "policy takes no returns")
        return float(value)

    def _visibility(self, mask: AgentMask | None) -> Tensor | None:
        """``mask`` as a bool [A, A] matrix on the policy's device (None stays None)."""
        if mask is None:
            return None
        if not self.model.uses_agents:
            raise ValueError(f"agent_mask applies to multi-agent policies, not to a {self.model_type} one")
        size = int(getattr(self.model, "config", {}).get("max_num_agents", 1))
        return as_visibility(mask, size, agent_names=self.agent_names, device=self.device)

    def _agent_label(self, agent_id: int) -> str | None:
        """The acting agent as the decoder's prompt names it (multi-agent policies only)."""
        if not self.model.uses_agents:
            return None
        return self.agent_names[agent_id] if agent_id < len(self.agent_names) else str(agent_id)

    def _agent_id(self, agent: int | str) -> int:
        if isinstance(agent, str):
            if agent in self.agent_names:
                return self.agent_names.index(agent)
            raise ValueError(f"unknown agent {agent!r}; known: {self.agent_names}")
        limit = getattr(self.model, "config", {}).get("max_num_agents", 1)
        if self.model.uses_agents and not 0 <= agent < limit:
            raise ValueError(f"agent id {agent} is outside [0, {limit})")
        return int(agent)

    # ------------------------------------------------------------------ use

    def reset(self) -> None:
        """Forget the conversation."""
        self._turns, self._texts, self._cache, self.last = [], [], None, None

    @property
    def history(self) -> list[tuple[str, str]]:
        """The conversation so far as (user input, reply) pairs."""
        return list(self._texts)

    def process(self, user_input: str, history: Sequence[tuple[str, str]] | None = None,
                *, agent: int | str | None = None, target_return: float | None = None,
                agent_mask: AgentMask | None = None) -> str:
        """Reply to ``user_input``; see the class docstring for conversation state.

        ``agent`` and ``target_return`` apply to this turn only (defaults: the pipeline's).
        ``agent_mask`` becomes the visibility of the whole conversation (earlier turns are
        recomputed with it when it changes).
        """
        if not isinstance(user_input, str):
            raise TypeError(f"user_input must be a string, got {type(user_input).__name__}")
        if agent_mask is not None:
            self._set_agent_mask(agent_mask)
        if history is not None:
            self._replace_history(history)
        agent_id = self.agent if agent is None else self._agent_id(agent)
        rtg = self.target_return if target_return is None else self._return_to_go(target_return)
        state = self._embed([user_input])[0]
        if len(self._turns) + 1 > self._max_turns():
            self._drop_oldest(len(self._turns) + 1 - self._max_turns())
        prediction, value, option = self._advance(_Turn(state=state, agent=agent_id,
                                                        return_to_go=rtg))
        candidates = (self.bank.by_logits(prediction, self.top_k) if self.discrete
                      else self.bank.nearest(prediction, self.top_k))
        context = DecodeContext(user_input=user_input, candidates=candidates,
                                discrete=self.discrete, bank=self.bank, history=self.history,
                                option=option, agent=self._agent_label(agent_id))
        reply = _as_reply(self.decoder(prediction.cpu(), context), self.decoder)
        text = reply.text
        self._turns[-1].action = self._action_input(text, candidates)
        self._texts.append((user_input, text))
        self.last = Prediction(text=text, candidates=candidates, raw=prediction.cpu(), value=value,
                               option=option, reply=reply)
        return text

    def replace_last_reply(self, text: str) -> None:
        """Make ``text`` the reply of the last turn (e.g. what the agent really did), so
        the next turn is conditioned on it instead of on the pipeline's own reply."""
        if not self._turns:
            raise ValueError("there is no turn yet whose reply could be replaced")
        self._turns[-1].action = self._action_input(text, None)
        self._texts[-1] = (self._texts[-1][0], text)

    # ------------------------------------------------------------------ internals

    def _set_agent_mask(self, agent_mask: AgentMask) -> None:
        mask = self._visibility(agent_mask)
        same = self.agent_mask is not None and torch.equal(mask, self.agent_mask)
        self.agent_mask = mask
        if not same and self._turns:
            self._rebuild_cache()

    def _embed(self, texts: list[str]) -> Tensor:
        return self.encoder.encode(texts, progress=False).float().to(self.device)

    def _max_turns(self) -> int:
        return int(getattr(self.model, "max_seq_len", 1024))

    def _action_input(self, text: str, candidates: list[tuple[str, float]] | None) -> Tensor:
        """What the policy sees of a reply: its id (discrete) or its embedding.

        A reply that is not in the bank (a generator wrote it) is embedded; a discrete
        policy then sees the nearest known action instead (the best candidate if given).
        """
        index = self.bank.index(text)
        if index is not None:
            if self.discrete:
                return torch.tensor(index, device=self.device)
            return self.bank.embeddings[index].to(self.device)
        if self.discrete:
            nearest = candidates[0][0] if candidates else self.bank.nearest(self._embed([text])[0], 1)[0][0]
            return torch.tensor(self.bank.index(nearest), device=self.device)
        return self._embed([text])[0]

    def _replace_history(self, history: Sequence[tuple[str, str]]) -> None:
        self.reset()
        pairs = [(str(user), str(reply)) for user, reply in history]
        if not pairs:
            return
        states = self._embed([user for user, _ in pairs])
        for state, (user, reply) in zip(states, pairs):
            self._turns.append(_Turn(state=state, agent=self.agent,
                                     action=self._action_input(reply, None),
                                     return_to_go=self.target_return))
            self._texts.append((user, reply))
        overflow = len(self._turns) + 1 - self._max_turns()
        if overflow > 0:
            self._drop_oldest(overflow)
        else:
            self._rebuild_cache()

    def _drop_oldest(self, count: int) -> None:
        self._turns = self._turns[count:]
        self._texts = self._texts[count:]
        self._rebuild_cache()

    def _rebuild_cache(self) -> None:
        """Replay the kept turns into a fresh cache."""
        turns = self._turns
        self._turns, self._cache = [], None
        for turn in turns:
            self._advance(_Turn(state=turn.state, agent=turn.agent, return_to_go=turn.return_to_go))
            self._turns[-1].action = turn.action

    @torch.no_grad()
    def _advance(self, turn: _Turn) -> tuple[Tensor, float | None, str | None]:
        """Feed the previous action and this state through the cache; predict the action."""
        if self._cache is None:
            self._cache = self.model.new_cache(1, device=self.device)
        prev = self._turns[-1].action.unsqueeze(0) if self._turns else None
        state = turn.state.unsqueeze(0)
        self._turns.append(turn)
        outputs = self.model.predict_next(
            self._cache, state, prev,
            agent_id=torch.tensor([turn.agent], device=self.device) if self.model.uses_agents else None,
            agent_mask=self.agent_mask,
            return_to_go=None if turn.return_to_go is None else torch.tensor([turn.return_to_go],
                                                                              device=self.device))
        value = None if outputs.values is None else float(outputs.values[0])
        return outputs.action_preds[0], value, self._option_label(outputs.option_logits)

    def _option_label(self, option_logits: Tensor | None) -> str | None:
        if option_logits is None:
            return None
        index = int(option_logits[0].argmax())
        return self.option_names[index] if index < len(self.option_names) else str(index)

    @property
    def kind(self) -> str:
        """Deprecated: ``model_type``."""
        warnings.warn("AgentPipeline.kind is deprecated: read AgentPipeline.model_type",
                      DeprecationWarning, stacklevel=2)
        return self.model_type


def _build_decoder(decoder: Any, options: Mapping[str, Any] | None) -> Any:
    if isinstance(decoder, str):
        return make_decoder(decoder, **dict(options or {}))
    if options:
        raise ValueError("decoder_options apply to a decoder given by name "
                         "(decoder=\"openai\" or \"hf\")")
    if decoder is None:
        return NearestNeighbourDecoder()
    if not callable(decoder):
        raise TypeError(f"decoder must be a name or a callable, got {type(decoder).__name__}")
    return decoder


def _as_reply(result: Any, decoder: Any) -> Reply:
    """A decoder's answer as a ``Reply`` (a plain string came from a user's own decoder)."""
    if isinstance(result, Reply):
        return result
    if isinstance(result, str):
        return Reply(text=result, source=getattr(decoder, "name", "custom"))
    raise TypeError(f"the decoder returned {type(result).__name__}; it must return a str or a Reply")


def _saved_target_return(policy: Any, given: float | None) -> float | None:
    """The target return a saved policy is stepped with (see ``from_pretrained``)."""
    if not policy.model.config.get("condition_on_returns", False):
        if given is not None:
            raise ValueError(f"{policy.directory} was not trained with --condition-on-returns; "
                             "a target return would feed it an input it never learned")
        return None
    if given is not None:
        return float(given)
    highest = policy.config.get("data", {}).get("max_return_to_go")
    if highest is None:
        warnings.warn(f"{policy.directory} was trained with --condition-on-returns but records no "
                      "training returns (saved by an older agentfast); it is stepped without a "
                      "target return unless you pass target_return (predict --target-return)",
                      RuntimeWarning, stacklevel=3)
        return None
    return float(highest)
