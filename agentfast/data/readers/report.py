"""What a read produced: the episodes, the skipped records, and a count per kind of everything
that was left out or transformed on the way."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

from ..schema import DataError, Episode
from .sources import Location, nesting_error

DEFAULT_AGENT = "assistant"


class SkippedRecordsWarning(UserWarning):
    """A read skipped bad records (lenient mode) or left content out; the ``ReadReport`` lists
    and counts them."""


class Kind(NamedTuple):
    """One kind of change a reader can make; ``template`` takes the count and a plural 's'."""

    template: str
    lossy: bool  # something is left out (warned about), not just rewritten


# Every kind a reader counts, in the order reports list them.
KINDS: dict[str, Kind] = {
    "unanswered_messages": Kind("left out {n} message{s} after the last assistant message of a "
                                "conversation (no action follows them)", True),
    "conversations_without_reply": Kind("skipped {n} conversation{s} with no assistant reply "
                                        "(nothing to learn as an action)", True),
    "hidden_messages": Kind("left out {n} message{s} the ChatGPT UI hides from the conversation "
                            "(metadata.is_visually_hidden_from_conversation)", True),
    "reasoning_messages": Kind("left out {n} internal reasoning message{s} (thoughts, reasoning "
                               "recaps, analysis channel): never actions", True),
    "empty_messages": Kind("left out {n} empty message{s} (no text, no media)", True),
    "voice_audio_parts": Kind("replaced {n} audio part{s} of voice messages by their transcript", True),
    "media_parts": Kind("replaced {n} image/audio/video/file part{s} by a short placeholder such "
                        "as [image]", True),
    "unsupported_content": Kind("replaced {n} message part{s} of an unknown type by a placeholder "
                                "naming the type", True),
    "context_messages": Kind("kept {n} custom-instruction or memory message{s} as state text", False),
    "attachments": Kind("named {n} uploaded file{s} in the message text", False),
    "weight0_messages": Kind("kept {n} assistant message{s} with weight 0 as context in the next "
                             "state (not actions)", False),
    "prompt_assistant_messages": Kind("kept {n} assistant message{s} of preference inputs as "
                                      "context (only the compared outputs are actions)", False),
    "refusals": Kind("kept {n} refusal{s} as the action text", False),
    "current_node_missing": Kind("followed {n} conversation{s} without current_node along "
                                 "their only branch", False),
    "preference_pairs": Kind("turned {n} preference record{s} into a preferred and a "
                             "non-preferred episode each (rewards +1 / -1)", False),
    "default_agent_episodes": Kind(f"gave {{n}} episode{{s}} without agent names the agent "
                                   f"'{DEFAULT_AGENT}' (other episodes of the data set name "
                                   "agents; it must not alias the first of them)", False),
}


@dataclass
class ReadReport:
    """What a reader produced: the good episodes, the skipped records and their errors, and
    ``counts``: how many of each kind in ``KINDS`` were left out or transformed.

    Nothing is dropped without being counted here. ``summary()`` lists it all; the CLI prints
    it after every read.
    """

    episodes: list[Episode] = field(default_factory=list)
    errors: list[DataError] = field(default_factory=list)
    skipped: int = 0
    path: str | None = None
    format: str | None = None
    counts: Counter = field(default_factory=Counter)

    @property
    def unanswered_messages(self) -> int:
        """Chat messages after a conversation's last assistant message (no action follows)."""
        return self.counts["unanswered_messages"]

    @property
    def records(self) -> int:
        """Input records read, good and skipped."""
        return self.counts["records"]

    def changes(self) -> list[str]:
        """One sentence per kind with a non-zero count, in ``KINDS`` order."""
        return [KINDS[kind].template.format(n=self.counts[kind], s="" if self.counts[kind] == 1 else "s")
                for kind in KINDS if self.counts[kind]]

    def lossy(self) -> bool:
        return bool(self.skipped) or any(self.counts[k] for k, kind in KINDS.items() if kind.lossy)

    def summary(self, first_error: bool = True) -> str:
        """The read in a line, then one indented line per kind of change, e.g.::

            read 300 episodes from x.json (chatgpt_export); skipped 2 bad records (first: ...)
              left out 4 messages the ChatGPT UI hides from the conversation (...)

        ``first_error``: name the first skipped record, for callers that do not list them all.
        """
        text = f"read {len(self.episodes)} episodes from {self.path or '<input>'}"
        if self.format:
            text += f" ({self.format})"
        if self.skipped:
            text += f"; skipped {self.skipped} bad record{'s' if self.skipped != 1 else ''}"
            text += f" (first: {self.errors[0]})" if self.errors and first_error else ""
        else:
            text += "; no bad records"
        return "\n".join([text, *(f"  {line}" for line in self.changes())])

    def no_episodes_reason(self) -> str | None:
        """Why the read gave no episode (None when it gave some): the input held no
        records, every record was bad, or the records held nothing to learn from."""
        if self.episodes:
            return None
        if not self.records:
            return "it holds no records"
        if self.skipped >= self.records:
            first = f" (first: {self.errors[0]})" if self.errors else ""
            return (f"every one of its {self.records} record{'s' if self.records != 1 else ''} "
                    f"is bad{first}")
        changes = "; ".join(self.changes())
        return (f"none of its {self.records} record{'s' if self.records != 1 else ''} gave an "
                f"episode{': ' + changes if changes else ''}")

    def require_episodes(self) -> "ReadReport":
        """This report, or a ``DataError`` saying why the read gave no episode."""
        reason = self.no_episodes_reason()
        if reason is not None:
            raise DataError(f"no episodes: {reason}", path=self.path)
        return self

    def to_dict(self) -> dict:
        """The counts for JSON logs: episodes, skipped and every non-zero kind."""
        return {"episodes": len(self.episodes), "skipped": self.skipped,
                **{kind: self.counts[kind] for kind in KINDS if self.counts[kind]}}

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)


class Built(NamedTuple):
    """What one input record became: zero or more episodes, and what was changed on the way."""

    episodes: list[Episode]
    counts: Counter


class Collector:
    """Applies the strict/lenient policy to a stream of record builders and fills the report."""

    def __init__(self, path: str, fmt: str, strict: bool, default_agents: bool = True) -> None:
        self.report = ReadReport(path=path, format=fmt)
        self.strict = strict
        self.default_agents = default_agents

    def attempt(self, build: Callable[[], Built], location: Location | None = None) -> None:
        self.report.counts["records"] += 1
        try:
            built = build()
        except DataError as error:
            self.fail(error)
            return
        except RecursionError:  # a builder walking a value nested thousands deep
            if location is None:
                raise
            self.fail(nesting_error(location))
            return
        self.report.episodes.extend(built.episodes)
        self.report.counts.update(built.counts)

    def fail(self, error: DataError) -> None:
        """A bad record: raised in strict mode, counted and kept in lenient mode."""
        if self.strict:
            raise error
        self.report.errors.append(error)
        self.report.skipped += 1

    def finish(self) -> ReadReport:
        if self.default_agents:
            self.report.counts["default_agent_episodes"] += give_unnamed_episodes_an_agent(self.report.episodes)
        if self.report.lossy():
            warnings.warn(self.report.summary(), SkippedRecordsWarning, stacklevel=3)
        return self.report


def give_unnamed_episodes_an_agent(episodes: Iterable[Episode]) -> int:
    """Episodes without agents in a data set whose other episodes name agents get the agent
    ``DEFAULT_AGENT`` of their own; returns how many.

    A data set maps an episode without agents to agent id 0, which is the first named agent
    when every other episode names its agents: the unnamed assistant of a chat record would
    silently become, say, the planner. Applied to chat formats, whose readers derive agents
    from message names; episode records state their agents themselves (an episode without
    ``agent_ids`` is agent 0 by the data set's documented rule).
    """
    episodes = list(episodes)
    if not any(e.agent_names for e in episodes):
        return 0
    changed = 0
    for episode in episodes:
        if episode.agent_ids is None:
            episode.agent_ids = [0] * len(episode)
            episode.agent_names = [DEFAULT_AGENT]
            changed += 1
    return changed
