"""What every decoder shares: the context it is given, the reply it returns, the prompt.

A policy predicts an action embedding (or logits over known actions); the pipeline ranks
the bank's known actions against it and hands a decoder a ``DecodeContext``. A decoder
returns the reply text, or a ``Reply`` that also says who wrote it. Generators (a chat
endpoint, a local causal LM) all see the same chat prompt, built by ``chat_messages``: the
conversation so far, with the nearest known actions and their scores in the system message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DEFAULT_INSTRUCTIONS", "DecodeContext", "Decoder", "DecoderError", "GeneratorDecoder",
           "Reply", "chat_messages"]

DEFAULT_INSTRUCTIONS = (
    "You write the next reply of an AI agent in the conversation that follows. A policy "
    "trained on this agent's logs predicted its next action; the known actions closest to "
    "that prediction are listed below, best first. Reply as the agent would now: carry out "
    "the best-ranked action, adapted to the conversation. Answer with the reply text only."
)


class DecoderError(RuntimeError):
    """A decoder could not produce a reply; the message is one line that says why."""


@dataclass
class DecodeContext:
    """What a decoder may use besides the raw prediction.

    candidates: the nearest known actions, best first, with their scores (cosine similarity
    to the predicted embedding, or the policy's probability when ``discrete``).
    history: the conversation before this turn as (user input, reply) pairs.
    option: the option a hierarchical policy chose for this step (its label).
    agent: the acting agent of a multi-agent policy (its name, or its id as text).
    """

    user_input: str
    candidates: list[tuple[str, float]]
    discrete: bool
    bank: Any  # the pipeline's ActionBank
    history: list[tuple[str, str]] = field(default_factory=list)
    option: str | None = None
    agent: str | None = None


@dataclass
class Reply:
    """A decoder's answer and where it came from.

    source: "retrieval", "openai" or "hf": what wrote ``text``.
    model: the generator's model name (as the endpoint reports it), None for retrieval.
    fallback: why the generator failed, when ``text`` is the retrieval answer in its place.
    truncated: the generator stopped at its token limit, not at the end of its reply.
    """

    text: str
    source: str
    model: str | None = None
    fallback: str | None = None
    truncated: bool = False


class Decoder(Protocol):
    def __call__(self, prediction: "Tensor", context: DecodeContext) -> Union[str, Reply]: ...


def chat_messages(context: DecodeContext, instructions: str | None = None) -> list[dict[str, str]]:
    """The chat prompt of a generator: system message, earlier turns, this turn's input.

    The system message holds ``instructions`` (default ``DEFAULT_INSTRUCTIONS``), the ranked
    known actions as ``"1. (0.912) text"`` lines, and the option / acting agent when the
    policy has them. Earlier turns alternate user and assistant messages.
    """
    if not context.candidates:
        raise ValueError("the decode context has no candidate actions")
    scores = ("probability under the policy" if context.discrete
              else "cosine similarity to the predicted action")
    lines = [instructions or DEFAULT_INSTRUCTIONS, "",
             f"Known actions nearest to the prediction ({scores}):"]
    for rank, (text, score) in enumerate(context.candidates, 1):
        lines.append(f"{rank}. ({score:.3f}) " + text.replace("\n", "\n   "))
    if context.option is not None:
        lines.append(f"The policy's current option (sub-task): {context.option}")
    if context.agent is not None:
        lines.append(f"The agent replying: {context.agent}")
    messages = [{"role": "system", "content": "\n".join(lines)}]
    for user, reply in context.history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": context.user_input})
    return messages


class GeneratorDecoder:
    """A decoder that writes the reply with a language model from ``chat_messages``.

    Subclasses implement ``generate(messages) -> Reply`` and raise ``DecoderError`` when
    they cannot. With ``fallback=True`` such a failure answers with the best-ranked known
    action instead, and the ``Reply`` says so (``source="retrieval"``, ``fallback=`` why).
    """

    name = "generator"

    def __init__(self, *, fallback: bool = False, instructions: str | None = None) -> None:
        self.fallback = bool(fallback)
        self.instructions = instructions

    def generate(self, messages: list[dict[str, str]]) -> Reply:
        raise NotImplementedError

    def __call__(self, prediction: "Tensor", context: DecodeContext) -> Reply:
        messages = chat_messages(context, self.instructions)
        try:
            return self.generate(messages)
        except DecoderError as error:
            if not self.fallback:
                raise
            return Reply(text=context.candidates[0][0], source="retrieval",
                         fallback=f"{self.name} decoder: {error}")
