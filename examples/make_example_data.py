"""Write the bundled example data set (fixed seed, so the files are reproducible).

    python examples/make_example_data.py            # writes examples/data/*

Outputs:
  data/episodes.jsonl      episodes over nine task types, single- and multi-agent, with
                           options and rewards (the training data of the demo)
  data/chat.jsonl          a few of them as OpenAI chat-format conversations with tool calls
  data/conversations.json  a few as a ChatGPT data export (message tree with a branch)

How the data is built, and why a policy can learn it on task types it never saw:
every episode follows one shared procedure. Each of the twelve task types belongs to one of four kinds
(fix a problem, build something, answer a question, review a change), announced by the
wording of the request ("Something is broken:", "Please implement:", "Can you explain",
"Please review:"), and every kind has three task types. Action texts come from one
bank of generic procedural steps shared by all task types. The next action is a fixed
function of (the kind, the previous action or two, and the outcome written in the current
observation). Observations reuse the same outcome sentences after different actions
("Result for x: It ran without errors."), so the state text alone is ambiguous and the
history is needed: nearest-neighbour-on-state falls short, a sequence policy does not.
Subjects (files, functions, concepts, data sets) differ per task type, so held-out task
types present new text around the same procedure.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

SEED = 1234
EPISODES_PER_TASK = 30
MULTI_AGENT_FRACTION = 0.4
OUT = Path(__file__).resolve().parent / "data"

# ---------------------------------------------------------------------------------------
# The shared action bank: key -> (text, option, role in multi-agent episodes)
ACTIONS = {
    "PLAN": ("Let me restate the goal and make a short plan before touching anything.", "plan", "planner"),
    "ASK": ("Before I go further: which version and environment are you using?", "plan", "planner"),
    "REPRO": ("Let me reproduce the problem with the smallest input that shows it.", "investigate", "coder"),
    "LOG": ("I'll add logging around the suspicious code path and run it again.", "investigate", "coder"),
    "TRACE": ("The failure is reproducible; let me trace it back to where the bad value first appears.", "investigate", "coder"),
    "FIX": ("I'll make the smallest change that fixes the cause.", "implement", "coder"),
    "READ": ("I'll read the existing code and its tests before changing anything.", "gather_context", "coder"),
    "DESIGN": ("I'll sketch the interface first and check it against the callers.", "implement", "planner"),
    "IMPLEMENT": ("I'll write the code in small steps, starting with the core case.", "implement", "coder"),
    "TEST": ("Let me run the test suite to check the change.", "verify", "reviewer"),
    "EDGE": ("Some cases still fail; let me handle the edge cases the first version missed.", "implement", "coder"),
    "REVERT": ("That approach is not working; I'll revert it and try a different one.", "implement", "coder"),
    "REGRESS": ("I'll add a regression test so this cannot come back.", "verify", "reviewer"),
    "LINT": ("Let me run the linter and type checker before handing it over.", "verify", "reviewer"),
    "CLEANUP": ("I'll fix the lint warnings and rename the unclear variables.", "implement", "coder"),
    "SUMMARY": ("All checks pass; here is a summary of what changed and why.", "report", "planner"),
    "GIVEUP": ("I'm stopping here; this is what I tried and what I would try next.", "report", "planner"),
    "SEARCH": ("Let me gather the relevant sources first: documentation, data and real usages.", "gather_context", "coder"),
    "EXAMPLE": ("I'll write a tiny runnable example to check my understanding.", "investigate", "coder"),
    "PROBE": ("The example did not behave as expected; let me isolate the edge case behind it.", "investigate", "coder"),
    "EXPLAIN": ("Here is the explanation, with a small example you can run yourself.", "report", "planner"),
    "CAVEATS": ("Here are the pitfalls, and when to choose something else instead.", "report", "planner"),
    "DIFF": ("I'll read the diff file by file and note anything suspicious.", "gather_context", "reviewer"),
    "CHECK": ("Let me run the tests and the linter on the branch.", "verify", "reviewer"),
    "COMMENT": ("The checks pass; I'll write review comments on what is good and what could be simpler.", "report", "reviewer"),
    "ISSUE": ("A check fails; I'll point to the failing case and the likely cause.", "report", "reviewer"),
    "APPROVE": ("The change looks good to me; approving with minor suggestions.", "report", "reviewer"),
    "REQUEST": ("Requesting changes: please fix the failing check first; details are inline.", "report", "reviewer"),
}
OPTION_NAMES = ["plan", "gather_context", "investigate", "implement", "verify", "report"]
ROLES = ["planner", "coder", "reviewer"]
# Hub and spoke: the planner and reviewer see everyone, the coder sees the planner and itself.
VISIBILITY = {"planner": ROLES, "coder": ["planner", "coder"], "reviewer": ROLES}

# Outcome sentences shared by every kind of result, so "it worked" looks the same after a
# reproduction attempt, a test run, a review check or an example.
WORKED = ["It ran without errors.", "Everything completed normally.", "No errors this time.",
          "The run finished cleanly."]
FAILED = ["It failed with an error.", "The run ended with errors.", "Errors were reported.",
          "It did not complete cleanly."]
# How the context lookup after the plan describes each kind of request (shared wording).
KIND_PHRASE = {"problem": "this is a bug report.", "build": "this is a change request.",
               "question": "this is a question.", "review": "this is a review request."}
ENVIRONMENTS = ["Python 3.11 on Ubuntu 22.04", "Python 3.10 on macOS 14", "Python 3.12 in a Docker image",
                "Python 3.9 on Windows 11", "PyPy 3.10 on Debian 12"]

# ---------------------------------------------------------------------------------------
# Task types: kind, request template and subject pools (three per kind)


@dataclass
class TaskType:
    name: str
    kind: str  # problem | build | question | review
    request: str
    subjects: dict[str, list[str]]
    probabilities: dict[str, float] = field(default_factory=dict)


FILES = ["parser.py", "cache.py", "billing/invoice.py", "api/routes.py", "utils/dates.py",
         "scheduler.py", "auth/session.py", "storage/s3.py", "report.py", "cli.py"]
FUNCTIONS = ["parse_header", "load_config", "compute_total", "refresh_token", "merge_ranges",
             "to_utc", "retry_request", "render_table", "split_batches", "normalize_email"]

TASK_TYPES = [
    TaskType("debugging", "problem",
             "Something is broken: {func} in {file} raises {error} when {condition}.",
             {"error": ["KeyError", "TypeError", "IndexError", "ValueError", "a RecursionError"],
              "condition": ["the input is empty", "two requests arrive at once", "the date is in a leap year",
                            "the config file has comments", "the list contains None"],
              "symptom": ["a KeyError on the missing field", "an off-by-one in the last page",
                          "a None slipping through", "a stale value from the previous call"]},
             {"reproduced": 0.7}),
    TaskType("performance_tuning", "problem",
             "Something is broken: {func} in {file} got slow; it takes {seconds} seconds since {change}.",
             {"seconds": ["4", "12", "30", "90"],
              "change": ["the last release", "we doubled the data", "the ORM upgrade", "caching was turned off"],
              "symptom": ["a query inside a loop", "the whole file read on every call",
                          "a quadratic list scan", "lock contention between workers"]},
             {"reproduced": 0.8}),
    TaskType("write_tests", "build",
             "Please implement: unit tests for {func} in {file}, covering {cases}.",
             {"cases": ["empty input and unicode", "timeouts and retries", "boundary dates",
                        "invalid arguments", "large inputs"]}),
    TaskType("refactor", "build",
             "Please implement: a cleanup of {file}; {func} has grown to {lines} lines and is hard to follow.",
             {"lines": ["180", "240", "400", "650"]}),
    TaskType("add_feature", "build",
             "Please implement: {feature} in {file}.",
             {"feature": ["a --dry-run flag", "CSV export", "pagination for the list endpoint",
                          "per-user rate limits", "a configurable timeout"]}),
    TaskType("explain_concept", "question",
             "Can you explain {concept}? I keep getting confused by {confusion}.",
             {"concept": ["Python generators", "async/await", "closures", "the GIL", "descriptors",
                          "context managers", "metaclasses", "dataclass field defaults"],
              "confusion": ["when the code actually runs", "what happens to local variables",
                            "why threads do not speed it up", "the order of calls"]}),
    TaskType("data_analysis", "question",
             "Can you explain why {metric} in {dataset} {movement} last {period}?",
             {"metric": ["weekly active users", "the churn rate", "average order value", "signup conversion"],
              "dataset": ["the events table", "orders.parquet", "the marketing export", "the CRM dump"],
              "movement": ["dropped 15%", "doubled", "became noisy", "flatlined"],
              "period": ["week", "month", "quarter"]}),
    TaskType("dependency_upgrade", "problem",
             "Something is broken: after upgrading {package}, {func} in {file} fails on startup.",
             {"package": ["numpy to 2.0", "pydantic to v2", "SQLAlchemy to 2.0", "Django to 5.0"],
              "symptom": ["a removed keyword argument", "a renamed import", "changed default behaviour",
                          "a stricter type check"]},
             {"reproduced": 0.85}),
    TaskType("compare_options", "question",
             "Can you explain the difference between {option_a} and {option_b} for {purpose}?",
             {"option_a": ["threads", "a list", "pickle", "REST", "SQLite"],
              "option_b": ["processes", "a deque", "JSON", "gRPC", "PostgreSQL"],
              "purpose": ["a small web service", "batch jobs", "a CLI tool", "a data pipeline"]}),
    TaskType("docs_review", "review",
             "Please review: the documentation changes for {func} in {file} before they are published.",
             {}, {"check_fails": 0.35}),
    TaskType("code_review", "review",
             "Please review: the pull request that rewrites {func} in {file}.",
             {}, {"check_fails": 0.45}),
    TaskType("security_audit", "review",
             "Please review: {file} for security problems before the release, especially {risk}.",
             {"risk": ["SQL injection", "secrets in logs", "path traversal", "unsafe deserialisation"]},
             {"check_fails": 0.5}),
]


# ---------------------------------------------------------------------------------------
# Episode generation


class EpisodeBuilder:
    """Accumulates (state, action) steps and renders states from the episode's subject."""

    def __init__(self, rng: random.Random, task: TaskType) -> None:
        self.rng = rng
        self.task = task
        self.fields = {"file": rng.choice(FILES), "func": rng.choice(FUNCTIONS)}
        for key, pool in task.subjects.items():
            self.fields[key] = rng.choice(pool)
        self.fields.setdefault("symptom", rng.choice(["an unexpected value", "a wrong branch taken"]))
        self.steps: list[tuple[str, str]] = []  # (state text, action key)

    def say(self, state: str, action: str) -> None:
        self.steps.append((state, action))

    def result(self, worked: bool, detail: str = "") -> str:
        sentence = self.rng.choice(WORKED if worked else FAILED)
        return f"Result for {self.fields['file']}: {sentence}{(' ' + detail) if detail else ''}"

    def edited(self, what: str) -> str:
        return f"Edited {self.fields['file']}: {what}."

    def read_summary(self) -> str:
        """The same wording after reading code, documentation or a diff: history tells them apart."""
        return (f"Read {self.rng.randint(2, 12)} files around {self.fields['file']}; "
                f"{self.rng.randint(2, 30)} places use {self.fields['func']}.")

    def chance(self, key: str, default: float) -> bool:
        return self.rng.random() < self.task.probabilities.get(key, default)


def opening(b: EpisodeBuilder) -> str:
    """Request, plan, and possibly a clarifying question; returns the state for the next step."""
    b.say(b.task.request.format(**b.fields), "PLAN")
    if b.chance("missing_info", 0.25):
        b.say("Context: the request does not say which version or environment is involved.", "ASK")
        return f"User: It is {b.rng.choice(ENVIRONMENTS)}."
    return (f"Context: {KIND_PHRASE[b.task.kind]} {b.fields['file']} is where this lives; "
            f"{b.rng.randint(2, 9)} other files import it.")


def run_tests_until_green(b: EpisodeBuilder, state: str, first_change: str) -> tuple[str, bool]:
    """Change, test, and on failures handle edge cases, then revert once. Returns (state, finished)."""
    b.say(state, first_change)
    b.say(b.edited(f"{b.rng.randint(3, 60)} lines changed"), "TEST")
    if not b.chance("first_test_fails", 0.35):
        return b.result(True, f"{b.rng.randint(20, 300)} tests passed."), True
    b.say(b.result(False, f"{b.rng.randint(1, 6)} tests failed."), "EDGE")
    b.say(b.edited(f"{b.rng.randint(3, 30)} lines changed"), "TEST")
    if not b.chance("second_test_fails", 0.4):
        return b.result(True, f"{b.rng.randint(20, 300)} tests passed."), True
    b.say(b.result(False, f"{b.rng.randint(1, 6)} tests failed."), "REVERT")
    reverted = b.edited("reverted to the original version")
    if b.chance("out_of_time", 0.3):
        b.say(f"{reverted} User: we are out of time, please wrap up.", "GIVEUP")
        return "", False
    retry = "TRACE" if b.task.kind == "problem" else "DESIGN"
    b.say(reverted, retry)
    after_retry = (f"Found the cause: {b.fields['symptom']}." if retry == "TRACE"
                   else f"Notes: the callers of {b.fields['func']} need a simpler signature.")
    b.say(after_retry, first_change)
    b.say(b.edited(f"{b.rng.randint(3, 60)} lines changed"), "TEST")
    return b.result(True, f"{b.rng.randint(20, 300)} tests passed."), True


def problem_episode(b: EpisodeBuilder) -> bool:
    state = opening(b)
    b.say(state, "REPRO")
    if b.chance("reproduced", 0.65):
        b.say(b.result(False, f"It shows {b.fields['symptom']}."), "TRACE")
    else:
        b.say(b.result(True), "LOG")
        b.say(b.result(False, f"The logs show {b.fields['symptom']}."), "TRACE")
    state, finished = run_tests_until_green(b, f"Found the cause: {b.fields['symptom']}.", "FIX")
    if not finished:
        return False
    b.say(state, "REGRESS")
    b.say(b.edited("the new test fails on the old code and passes now"), "SUMMARY")
    return True


def build_episode(b: EpisodeBuilder) -> bool:
    state = opening(b)
    b.say(state, "READ")
    b.say(b.read_summary(), "DESIGN")
    notes = f"Notes: the callers of {b.fields['func']} need a simpler signature."
    state, finished = run_tests_until_green(b, notes, "IMPLEMENT")
    if not finished:
        return False
    b.say(state, "LINT")
    if b.chance("lint_warnings", 0.35):
        b.say(b.result(False, f"{b.rng.randint(1, 9)} warnings."), "CLEANUP")
        b.say(b.edited(f"{b.rng.randint(3, 20)} lines changed"), "TEST")
        b.say(b.result(True, f"{b.rng.randint(20, 300)} tests passed."), "LINT")
    b.say(b.result(True, "No warnings."), "SUMMARY")
    return True


def question_episode(b: EpisodeBuilder) -> bool:
    state = opening(b)
    b.say(state, "SEARCH")
    b.say(b.read_summary(), "EXAMPLE")
    if b.chance("example_fails", 0.4):
        b.say(b.result(False, "The output was not what I predicted."), "PROBE")
        b.say("Found the cause: an edge case the documentation only mentions in a footnote.", "EXPLAIN")
    else:
        b.say(b.result(True, "The output matches what I predicted."), "EXPLAIN")
    if b.chance("follow_up", 0.4):
        b.say("User: Thanks. When should I avoid it?", "CAVEATS")
    return True


def review_episode(b: EpisodeBuilder) -> bool:
    state = opening(b)
    b.say(state, "DIFF")
    b.say(b.read_summary(), "CHECK")
    draft = f"Draft saved: {b.rng.randint(2, 9)} comments."
    if b.chance("check_fails", 0.45):
        b.say(b.result(False, f"{b.rng.randint(1, 4)} checks failed."), "ISSUE")
        b.say(draft, "REQUEST")
    else:
        b.say(b.result(True, "All checks passed."), "COMMENT")
        b.say(draft, "APPROVE")
    return True


FLOWS = {"problem": problem_episode, "build": build_episode,
         "question": question_episode, "review": review_episode}


def make_episode(rng: random.Random, task: TaskType, index: int, multi_agent: bool) -> dict:
    builder = EpisodeBuilder(rng, task)
    success = FLOWS[task.kind](builder)
    states = [state for state, _ in builder.steps]
    keys = [key for _, key in builder.steps]
    rewards = [0.0] * len(keys)
    for t, key in enumerate(keys):
        if key == "REVERT":
            rewards[t] = -0.2  # a wasted attempt
    rewards[-1] += 1.0 if success else -1.0
    agents = [ACTIONS[k][2] for k in keys] if multi_agent else ["assistant"] * len(keys)
    metadata = {
        "episode_id": f"{task.name}-{index:03d}",
        "task_type": task.name,
        "success": success,
        "multi_agent": multi_agent,
        "agent_names": ROLES if multi_agent else ["assistant"],
        "option_names": OPTION_NAMES,
    }
    if multi_agent:
        metadata["visibility"] = VISIBILITY
        metadata["visibility_preset"] = "hub_and_spoke"
    return {
        "states": states,
        "actions": [ACTIONS[k][0] for k in keys],
        "rewards": rewards,
        "agent_ids": agents,
        "options": [ACTIONS[k][1] for k in keys],
        "metadata": metadata,
    }


def make_episodes(rng: random.Random) -> list[dict]:
    episodes = []
    for task in TASK_TYPES:
        for i in range(EPISODES_PER_TASK):
            episodes.append(make_episode(rng, task, i, rng.random() < MULTI_AGENT_FRACTION))
    rng.shuffle(episodes)
    return episodes


# ---------------------------------------------------------------------------------------
# The same episodes as chat logs, to show the converters

TOOL_OF = {"REPRO": "run_command", "LOG": "run_command", "TEST": "run_tests", "CHECK": "run_tests",
           "LINT": "run_linter", "EXAMPLE": "run_python", "FIX": "edit_file", "IMPLEMENT": "edit_file",
           "EDGE": "edit_file", "REVERT": "edit_file", "CLEANUP": "edit_file", "REGRESS": "edit_file",
           "READ": "read_file", "SEARCH": "search_docs", "DIFF": "read_diff"}
TEXT_OF = {text: key for key, (text, _, _) in ACTIONS.items()}


def chat_messages(episode: dict) -> list[dict]:
    """User turns for requests and replies, tool turns for observations after tool calls."""
    messages: list[dict] = [{"role": "system", "content": "You are a careful software engineering assistant."}]
    call_id = None
    for t, (state, action) in enumerate(zip(episode["states"], episode["actions"])):
        if call_id is not None:
            messages.append({"role": "tool", "tool_call_id": call_id, "content": state})
        else:
            messages.append({"role": "user", "content": state})
        key = TEXT_OF[action]
        message: dict = {"role": "assistant", "content": action}
        if episode["metadata"]["multi_agent"]:
            message["name"] = episode["agent_ids"][t]
        call_id = None
        if key in TOOL_OF and t + 1 < len(episode["states"]):
            call_id = f"call_{t}"
            target = re.search(r"[\w/]+\.py", episode["states"][0])
            arguments = json.dumps({"path": target.group(0) if target else "."})
            message["tool_calls"] = [{"id": call_id, "type": "function",
                                      "function": {"name": TOOL_OF[key], "arguments": arguments}}]
        messages.append(message)
    return messages


def chatgpt_conversation(episode: dict, index: int, rng: random.Random) -> dict:
    """A conversations.json entry: a message tree whose current branch is the episode.

    The first user message also gets an abandoned edited version (a second branch) so the
    reader must follow current_node rather than take every node.
    """
    mapping: dict[str, dict] = {}

    def add(node_id: str, parent: str | None, message: dict | None) -> None:
        mapping[node_id] = {"id": node_id, "message": message, "parent": parent, "children": []}
        if parent is not None:
            mapping[parent]["children"].append(node_id)

    def message(role: str, text: str, node_id: str, recipient: str = "all", name: str | None = None) -> dict:
        return {"id": node_id, "author": {"role": role, "name": name, "metadata": {}},
                "create_time": 1_700_000_000 + len(mapping), "content": {"content_type": "text", "parts": [text]},
                "status": "finished_successfully", "recipient": recipient, "metadata": {}}

    add("root", None, None)
    add("sys", "root", {**message("system", "", "sys"), "metadata": {"is_visually_hidden_from_conversation": True}})
    add("draft", "sys", message("user", "(an earlier wording of the request, edited later)", "draft"))
    parent = "sys"
    for t, (state, action) in enumerate(zip(episode["states"], episode["actions"])):
        user_id, reply_id = f"u{t}", f"a{t}"
        role = "user" if t == 0 or state.startswith(("User:", "Context:")) else "tool"
        add(user_id, parent, message(role, state, user_id, name=None if role == "user" else "python"))
        add(reply_id, user_id, message("assistant", action, reply_id))
        parent = reply_id
    return {"title": episode["states"][0][:60], "create_time": 1_700_000_000 + index,
            "update_time": 1_700_000_100 + index, "mapping": mapping, "current_node": parent,
            "conversation_id": f"example-{index:02d}", "id": f"example-{index:02d}"}


def main() -> None:
    rng = random.Random(SEED)
    episodes = make_episodes(rng)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "episodes.jsonl", "w", encoding="utf-8") as handle:
        for episode in episodes:
            handle.write(json.dumps(episode, separators=(",", ":")) + "\n")
    with open(OUT / "chat.jsonl", "w", encoding="utf-8") as handle:
        # A mix of single- and multi-agent conversations.
        single = [e for e in episodes if not e["metadata"]["multi_agent"]][:4]
        multi = [e for e in episodes if e["metadata"]["multi_agent"]][:4]
        for episode in single + multi:
            record = {"messages": chat_messages(episode), "metadata": {"task_type": episode["metadata"]["task_type"]}}
            handle.write(json.dumps(record) + "\n")
    conversations = [chatgpt_conversation(e, i, rng) for i, e in enumerate(episodes[8:12])]
    (OUT / "conversations.json").write_text(json.dumps(conversations, indent=1) + "\n", encoding="utf-8")
    steps = sum(len(e["states"]) for e in episodes)
    print(f"wrote {len(episodes)} episodes ({steps} steps) to {OUT / 'episodes.jsonl'}, "
          f"8 chat conversations and {len(conversations)} export conversations")


if __name__ == "__main__":
    main()
