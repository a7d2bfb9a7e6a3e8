"""Batches for fine-tuning a causal LM on multi-agent conversations with agent masks.

``AgentChatCollator`` turns agentfast episodes (``{"states", "actions", "agent_ids", ...}``,
see ``agentfast.data.schema``) or OpenAI chat records (``{"messages": [...]}``) into
``input_ids``, ``attention_mask``, ``labels``, ``agent_ids`` and ``agent_visibility``, ready
for ``model(**batch)`` on a model loaded with ``attn_implementation="agentfast"``.

Who owns a token (its agent):
- agent 0 is the shared context (the system prompt, the tokenizer's leading special tokens):
  every agent sees it;
- an assistant message (an episode's action) belongs to its agent: the message's ``name``
  (an episode's agent label), or ``"assistant"`` when it has none;
- any other message (user, tool; an episode's state) belongs to the agent that acts next,
  because it is what that agent saw before acting (trailing ones: the last agent).
Agents 1.. are numbered per record in order of first appearance (episodes: in the order of
``metadata["agent_names"]``). Visibility (row = the attending agent): from the ``visibility``
argument or an episode's ``metadata["visibility"]`` ({agent: [agents it sees]}); agents not
listed see everyone; every agent sees itself and the shared context.

Loss: labels are the token ids on the chosen agents' turns (``train_on``) and -100
elsewhere (a batch with no such token is refused: its loss would be NaN); a message with OpenAI's ``"weight": 0`` is never trained. With a chat template the
role header of a turn (what ``add_generation_prompt`` adds) is not trained, its content and
end-of-turn tokens are. Without a template each message is rendered ``"<speaker>: <content>"``
and ends with the EOS token (assistant turns) or a newline. Text a chat template puts
before the first message (a default system prompt) belongs to that message's agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ...data.schema import Episode
from ...visibility import MAX_AGENTS, visibility_from_map, visibility_preset

IGNORE_INDEX = -100
SHARED = "<shared>"  # name of agent 0, the context everyone sees


@dataclass(frozen=True)
class _Message:
    role: str
    content: str  # the text of the content
    calls: str  # tool calls as JSON lines (rendered by us when there is no chat template)
    agent: str | None  # None until resolved; SHARED for the system prompt
    trainable: bool  # an assistant turn with a non-zero weight
    raw: Mapping[str, Any]  # what the chat template receives


@dataclass(frozen=True)
class EncodedRecord:
    """One record as token ids with per-token labels and agents (local ids, 0 = shared)."""

    input_ids: list[int]
    labels: list[int]
    agent_ids: list[int]
    agent_names: list[str]  # agent_names[i] is local id i; [0] is the shared context
    visibility: Tensor  # bool [A, A], A = len(agent_names)

    @property
    def trained_tokens(self) -> int:
        """How many tokens carry loss (0: the record is context only)."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, Mapping) and isinstance(part.get("text", part.get("refusal")), str):
                parts.append(part.get("text", part.get("refusal")))
            else:
                raise ValueError(f"{where}: content part {i} has no text (only text parts can be tokenized)")
        return "".join(parts)
    raise ValueError(f"{where}: content must be a string or a list of text parts, got {type(content).__name__}")


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """Each tool call's function name and arguments (OpenAI ``tool_calls``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: 'tool_calls' must be a list of tool calls, got "
                         f"{type(value).__name__} (the list encoded as JSON text?)")
    calls = []
    for j, call in enumerate(value):
        kind = call.get("type", "function") if isinstance(call, Mapping) else None
        body = call.get(kind) if kind in ("function", "custom") else None
        if not isinstance(body, Mapping):
            raise ValueError(f"{where}: tool_calls[{j}] must be an object with a 'function' "
                             "(or 'custom') object")
        arguments = body.get("arguments") if kind == "function" else body.get("input")
        calls.append({"name": body.get("name"), "arguments": arguments})
    return calls


def _chat_messages(record: Mapping[str, Any], where: str) -> list[_Message]:
    raw_messages = record.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    messages = []
    for i, raw in enumerate(raw_messages):
        here = f"{where}: message {i}"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("role"), str):
            raise ValueError(f"{here}: each message needs a string 'role'")
        role = raw["role"]
        content = _text(raw.get("content"), here)
        calls = "".join("\n" + json.dumps(call, ensure_ascii=False)
                        for call in _tool_calls(raw.get("tool_calls"), here))
        if role == "assistant":
            name = raw.get("name") or "assistant"
            messages.append(_Message(role, content, calls, str(name), raw.get("weight", 1) != 0, raw))
        elif role in ("system", "developer"):
            messages.append(_Message(role, content, calls, SHARED, False, raw))
        else:
            messages.append(_Message(role, content, calls, None, False, raw))
    return messages


def _episode_messages(record: Mapping[str, Any] | Episode, system_prompt: str | None) -> tuple[list[_Message], Episode]:
    episode = record if isinstance(record, Episode) else Episode.from_dict(record)
    agents = episode.agent_labels() or ["assistant"] * len(episode)
    messages = []
    if system_prompt:
        messages.append(_Message("system", system_prompt, "", SHARED, False, {"role": "system", "content": system_prompt}))
    for state, action, agent in zip(episode.states, episode.actions, agents):
        messages.append(_Message("user", state, "", agent, False, {"role": "user", "content": state}))
        messages.append(_Message("assistant", action, "", agent, True,
                                 {"role": "assistant", "name": agent, "content": action}))
    return messages, episode


def _resolve_owners(messages: list[_Message]) -> list[_Message]:
    """A message without an agent belongs to the agent acting next (else the last one)."""
    resolved: list[_Message] = list(messages)
    following: str | None = None
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "assistant":
            following = messages[i].agent
        elif messages[i].agent is None and following is not None:
            resolved[i] = _replace_agent(messages[i], following)
    last = next((m.agent for m in reversed(messages) if m.role == "assistant"), SHARED)
    return [_replace_agent(m, last) if m.agent is None else m for m in resolved]


def _replace_agent(message: _Message, agent: str) -> _Message:
    return _Message(message.role, message.content, message.calls, agent, message.trainable, message.raw)


def _visibility_matrix(names: Sequence[str], declared: Mapping[str, Sequence[str]] | str | None) -> Tensor:
    """bool [A, A] over ``names`` (names[0] is the shared context, which everyone sees)."""
    if declared is None or isinstance(declared, Mapping):
        matrix = visibility_from_map(declared, names, len(names))
    elif declared in ("full", "private"):
        matrix = visibility_preset(declared, len(names))
    else:
        raise ValueError(f"visibility must be 'full', 'private' or a mapping agent -> agents it sees, got {declared!r}")
    matrix[:, 0] = True
    return matrix


class AgentChatCollator:
    """Build causal-LM batches with agent masks from episodes or chat records.

    Args:
        tokenizer: a transformers tokenizer; its chat template is used when it has one.
        train_on: ``"all"`` to train every agent's turns, or the names of the agents whose
            turns carry loss (e.g. ``{"coder"}``).
        visibility: ``None`` (an episode's ``metadata["visibility"]``, else everyone sees
            everyone), ``"full"``, ``"private"`` or a mapping {agent: [agents it sees]}.
        system_prompt: a shared system message put before every episode (chat records
            bring their own).
        max_length: refuse records longer than this many tokens (nothing is cut silently).
        pad_to_multiple_of: round the padded length up to a multiple of this.

    ``collator(records)`` returns ``input_ids``, ``attention_mask``, ``labels``, ``agent_ids``
    (long [B, N]) and ``agent_visibility`` (bool [B, A, A]); padding follows
    ``tokenizer.padding_side``. ``encode(record)`` gives one record's ids (for
    ``datasets.map``-style pre-tokenisation: the collator accepts ``EncodedRecord`` too).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        train_on: str | Iterable[str] = "all",
        visibility: Mapping[str, Sequence[str]] | str | None = None,
        system_prompt: str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.train_on = "all" if train_on == "all" else frozenset(
            str(a) for a in ([train_on] if isinstance(train_on, str) else train_on))
        self.train_on_label = "all" if self.train_on == "all" else sorted(self.train_on)
        self.visibility = visibility
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        self.use_template = getattr(tokenizer, "chat_template", None) is not None

    # ---------------------------------------------------------------- encoding
    def encode(self, record: Mapping[str, Any] | Episode | EncodedRecord, where: str = "record") -> EncodedRecord:
        """Token ids, labels, agents and visibility of one episode or chat record."""
        if isinstance(record, EncodedRecord):
            return record
        if isinstance(record, Episode) or (isinstance(record, Mapping) and "states" in record):
            messages, episode = _episode_messages(record, self.system_prompt)
            declared = self.visibility if self.visibility is not None else episode.metadata.get("visibility")
            order = list(episode.agent_names or [])
        elif isinstance(record, Mapping) and "messages" in record:
            messages, declared, order = _chat_messages(record, where), self.visibility, []
        else:
            raise ValueError(f"{where}: expected an episode ({{'states', 'actions', ...}}) or a chat record "
                             f"({{'messages': [...]}}), got {type(record).__name__}")
        messages = _resolve_owners(messages)
        names = [SHARED]
        for agent in order + [m.agent for m in messages]:
            if agent not in names:
                names.append(agent)
        if len(names) > MAX_AGENTS:
            raise ValueError(f"{where}: {len(names) - 1} agents; at most {MAX_AGENTS - 1} fit beside the shared context")
        ids: list[int] = []
        labels: list[int] = []
        agents: list[int] = []
        for text, agent, trained in self._pieces(messages, where):
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
            agents += [names.index(agent)] * len(piece)
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"{where}: {len(ids)} tokens, more than max_length={self.max_length}; "
                             "shorten the record or raise max_length")
        return EncodedRecord(ids, labels, agents, names, _visibility_matrix(names, declared))

    def _trained(self, message: _Message) -> bool:
        return message.trainable and (self.train_on == "all" or message.agent in self.train_on)

    def _pieces(self, messages: list[_Message], where: str) -> list[tuple[str, str, bool]]:
        """(text, agent, trained) pieces whose concatenation is the rendered conversation."""
        if not self.use_template:
            pieces = []
            bos = self.tokenizer.bos_token
            if bos:
                pieces.append((bos, SHARED, False))
            eos = self.tokenizer.eos_token or "\n"
            for m in messages:
                speaker = m.raw.get("name") or m.role
                end = eos if m.role == "assistant" else "\n"
                pieces.append((f"{speaker}: ", m.agent, False))
                pieces.append((m.content + m.calls + end, m.agent, self._trained(m)))
            return pieces
        return self._template_pieces(messages, where)

    def _render(self, messages: list[_Message], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            [dict(m.raw, content=m.content) for m in messages], tokenize=False,
            add_generation_prompt=generation_prompt)

    def _template_pieces(self, messages: list[_Message], where: str) -> list[tuple[str, str, bool]]:
        pieces: list[tuple[str, str, bool]] = []
        rendered = ""
        for i, message in enumerate(messages):
            full = self._render(messages[: i + 1])
            if not full.startswith(rendered):
                raise ValueError(f"{where}: the chat template does not render the conversation message by "
                                 f"message (message {i} rewrites earlier text), so tokens cannot be assigned "
                                 "to agents; use a template without that behaviour")
            trained = self._trained(message)
            header = ""
            if trained:
                prompt = self._render(messages[:i], generation_prompt=True) if i else ""
                if prompt.startswith(rendered) and full.startswith(prompt):
                    header = prompt[len(rendered):]
            if header:
                pieces.append((header, message.agent, False))
            pieces.append((full[len(rendered) + len(header):], message.agent, trained))
            rendered = full
        return pieces

    # ---------------------------------------------------------------- batching
    def __call__(self, records: Sequence[Mapping[str, Any] | Episode | EncodedRecord]) -> dict[str, Tensor]:
        if not records:
            raise ValueError("AgentChatCollator needs at least one record")
        encoded = [self.encode(r, where=f"record {i}") for i, r in enumerate(records)]
        if not any(e.trained_tokens for e in encoded):
            # Every label -100 would make the loss NaN and poison the weights; stop here instead.
            agents = sorted({name for e in encoded for name in e.agent_names[1:]})
            raise ValueError(f"no token of this batch carries loss: train_on={self.train_on_label} matches no "
                             f"turn of its records (agents: {', '.join(agents)}); drop records whose "
                             "encode(record).trained_tokens is 0")
        longest = max(len(e.input_ids) for e in encoded)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        num_agents = max(len(e.agent_names) for e in encoded)
        batch = len(encoded)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        agent_ids = torch.zeros(batch, longest, dtype=torch.long)
        attention_mask = torch.zeros(batch, longest, dtype=torch.long)
        visibility = torch.zeros(batch, num_agents, num_agents, dtype=torch.bool)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for b, e in enumerate(encoded):
            n = len(e.input_ids)
            span = slice(longest - n, longest) if left else slice(0, n)
            input_ids[b, span] = torch.tensor(e.input_ids, dtype=torch.long)
            labels[b, span] = torch.tensor(e.labels, dtype=torch.long)
            agent_ids[b, span] = torch.tensor(e.agent_ids, dtype=torch.long)
            attention_mask[b, span] = 1
            a = len(e.agent_names)
            visibility[b, :a, :a] = e.visibility
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "agent_ids": agent_ids, "agent_visibility": visibility}
