"""Every ```python block of README.md and examples/README.md runs as pasted and prints.

Each block runs alone, in a fresh namespace as if pasted into a new interpreter, with the
repository root as the working directory. A block must print something a reader can check;
when a ```text block follows it directly (blank lines between at most), that is what it must
print, line for line.

A block that needs files made by a command says so in an HTML comment on the line above it:

    <!-- needs: demo -->     the policies `make demo` writes (runs/demo/NAME): the block then
                             runs in a temporary folder holding a tiny stand-in for each
                             runs/demo/NAME it names, trained here in seconds (same files;
                             its replies are noise)
    <!-- needs: chat-server -->  a chat-completions endpoint: a server on 127.0.0.1
                             (tests/chat_server.py) that $OPENAI_BASE_URL names, answering
                             every request with one sentence the block must print
    <!-- needs: chat-model -->   models/Qwen2.5-0.5B-Instruct: a tiny random chat LM
                             (tests/tiny_chat_lm.py) in that folder, hub access off

Markers combine: ``<!-- needs: demo, chat-server -->``.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "examples/README.md")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NEEDS = re.compile(r"<!--\s*needs:\s*([\w, -]+?)\s*-->\s*$")
KNOWN_NEEDS = {"demo", "chat-server", "chat-model"}
SERVED_REPLY = "Run the parser on an empty header first."
DEMO_POLICIES = ("action", "multi_agent", "hierarchical")


@dataclass
class Snippet:
    document: str
    line: int
    code: str
    needs: frozenset[str]
    expected_output: str | None

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def snippets(document: str, root: Path = ROOT) -> list[Snippet]:
    text = (root / document).read_text(encoding="utf-8")
    fences = list(FENCE.finditer(text))
    found = []
    for index, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        before = text[:fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NEEDS.search(before)
        needs = frozenset(n.strip() for n in marker.group(1).split(",")) if marker else frozenset()
        following = fences[index + 1] if index + 1 < len(fences) else None
        expected = None
        if (following is not None and following.group(1) == "text"
                and not text[fence.end():following.start()].strip()):
            expected = following.group(2)
        found.append(Snippet(document, text.count("\n", 0, fence.start()) + 1, fence.group(2),
                             needs, expected))
    return found


ALL = [snippet for document in DOCUMENTS for snippet in snippets(document)]


def test_both_documents_have_python_snippets():
    assert {s.document for s in ALL} == set(DOCUMENTS)
    assert sum(s.document == "README.md" for s in ALL) >= 3


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder laid out as after `make demo`; ``policy(name)`` trains runs/demo/NAME there (a
    tiny model on a tiny log with a tiny local encoder, in seconds) the first time it is asked."""
    from agentfast.cli import main
    from tests.training_fixtures import make_episode_dicts, save_tiny_encoder, write_jsonl

    root = tmp_path_factory.mktemp("demo")
    data = write_jsonl(root / "episodes.jsonl", make_episode_dicts(4))
    encoder = save_tiny_encoder(root / "encoder", hidden_size=32)

    def policy(model: str) -> None:
        output = root / "runs" / "demo" / model
        if output.exists():
            return
        assert model in DEMO_POLICIES, f"make demo writes no runs/demo/{model}"
        assert main(["train", str(data), "--model", model, "--output", str(output),
                     "--encoder", str(encoder), "--cache-dir", str(root / "cache"),
                     "--held-out-task-types", "performance", "--max-steps", "2", "--eval-every", "2",
                     "--embed-dim", "16", "--num-layers", "1", "--num-heads", "2", "--hidden-dim", "32",
                     "--max-seq-len", "4", "--batch-size", "4", "--warmup-steps", "1",
                     "--no-progress", "--no-eval"]) == 0

    return root, policy


@pytest.mark.parametrize("snippet", ALL, ids=lambda s: s.name)
def test_snippet_runs_as_pasted_and_prints(snippet, request, monkeypatch):
    unknown = snippet.needs - KNOWN_NEEDS
    assert not unknown, f"{snippet.name}: unknown needs {sorted(unknown)}; this test knows {sorted(KNOWN_NEEDS)}"
    folder = ROOT
    if "demo" in snippet.needs:
        folder, policy = request.getfixturevalue("demo_folder")
        for model in sorted(set(re.findall(r"runs/demo/(\w+)", snippet.code))):
            policy(model)
    if "chat-model" in snippet.needs:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        chat_model = folder / "models" / "Qwen2.5-0.5B-Instruct"
        if not chat_model.exists():
            from tests.tiny_chat_lm import save_tiny_chat_lm

            save_tiny_chat_lm(chat_model)
    server = None
    if "chat-server" in snippet.needs:
        from tests.chat_server import OUTSIDE_SETTINGS, ChatServer

        for name in OUTSIDE_SETTINGS:
            monkeypatch.delenv(name, raising=False)
        server = ChatServer()
        request.addfinalizer(server.close)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        for _ in range(snippet.code.count(".process(")):
            server.answer(SERVED_REPLY)
    monkeypatch.chdir(folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet.code, snippet.name, "exec"), {"__name__": "__main__"})
    output = printed.getvalue()
    assert output.strip(), f"{snippet.name} prints nothing a reader could check"
    if server is not None:
        assert server.requests and SERVED_REPLY in output, output
    if snippet.expected_output is not None:
        assert output.strip().splitlines() == snippet.expected_output.strip().splitlines(), \
            f"{snippet.name} printed something else than the output shown after it"


def test_snippet_reader_finds_markers_and_outputs(tmp_path):
    """A needs marker binds to the block right below it; an output block counts only when
    nothing but blank lines separates it from its code."""
    (tmp_path / "doc.md").write_text(
        "<!-- needs: demo -->\n```python\nprint(1)\n```\n\n```text\n1\n```\n"
        "```python\nprint(2)\n```\nprose\n```text\n2\n```\n```bash\nls\n```\n")
    first, second = snippets("doc.md", root=tmp_path)
    assert (first.line, first.code, first.needs, first.expected_output) == (2, "print(1)\n", {"demo"}, "1\n")
    assert (second.line, second.code, second.needs, second.expected_output) == (9, "print(2)\n", set(), None)
