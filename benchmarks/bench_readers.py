"""Conversion throughput and peak memory on a generated ChatGPT export.

    python benchmarks/bench_readers.py [--megabytes 100] [--keep PATH]

Writes a minified ``conversations.json`` of about ``--megabytes`` MB with the message shapes
real exports hold (hidden system messages, custom instructions, uploads with image parts,
reasoning, tool calls with code and execution output, browsing, voice), then converts it to
episode JSONL in a fresh process and reports records/s, MB/s and the peak resident memory,
next to the peak of a process that only ``json.load``s the same file (what reading it whole
costs).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the build fails after the upgrade because parse returns none when the config has "
         "comments so we cache results and retry with a smaller batch then check the logs").split()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def message(node_id: str, role: str, content: dict, *, recipient: str = "all", name: str | None = None,
            metadata: dict | None = None) -> dict:
    return {"id": node_id, "author": {"role": role, "name": name, "metadata": {}},
            "create_time": 1.7e9, "update_time": None, "content": content,
            "status": "finished_successfully", "end_turn": None, "weight": 1.0,
            "metadata": metadata or {}, "recipient": recipient, "channel": None}


def conversation(rng: random.Random, index: int) -> dict:
    nodes: list[tuple[str, dict | None]] = [("root", None)]

    def add(role: str, content: dict, **kwargs) -> None:
        node_id = f"c{index}-n{len(nodes)}"
        nodes.append((node_id, message(node_id, role, content, **kwargs)))

    hidden = {"is_visually_hidden_from_conversation": True}
    add("system", {"content_type": "text", "parts": [""]}, metadata=hidden)
    add("user", {"content_type": "user_editable_context", "user_profile": sentence(rng, 20),
                 "user_instructions": sentence(rng, 15)}, metadata=hidden)
    for turn in range(rng.randint(2, 6)):
        if rng.random() < 0.2:
            add("user", {"content_type": "multimodal_text", "parts": [
                {"content_type": "image_asset_pointer", "asset_pointer": f"file-service://file-{index}-{turn}",
                 "size_bytes": 48029, "width": 1024, "height": 768}, sentence(rng, 30)]},
                metadata={"attachments": [{"id": f"file-{index}-{turn}", "name": f"shot{turn}.png",
                                           "mime_type": "image/png"}]})
        else:
            add("user", {"content_type": "text", "parts": [sentence(rng, rng.randint(10, 80))]})
        if rng.random() < 0.3:
            add("assistant", {"content_type": "thoughts", "thoughts": [
                {"summary": sentence(rng, 4), "content": sentence(rng, 60), "finished": True}]})
            add("assistant", {"content_type": "reasoning_recap", "content": "Thought for 7 seconds"})
        if rng.random() < 0.4:
            add("assistant", {"content_type": "code", "language": "python", "text": sentence(rng, 20)},
                recipient="python")
            add("tool", {"content_type": "execution_output", "text": sentence(rng, 30)}, name="python")
        if rng.random() < 0.2:
            add("assistant", {"content_type": "text", "parts": [json.dumps({"query": sentence(rng, 5)})]},
                recipient="browser")
            add("tool", {"content_type": "tether_browsing_display", "result": "",
                         "summary": sentence(rng, 40)}, name="browser")
        add("assistant", {"content_type": "text", "parts": [sentence(rng, rng.randint(30, 200))]},
            metadata={"model_slug": "gpt-4o", "finish_details": {"type": "stop"}})
    mapping = {}
    for i, (node_id, msg) in enumerate(nodes):
        mapping[node_id] = {"id": node_id, "message": msg, "parent": nodes[i - 1][0] if i else None,
                            "children": [nodes[i + 1][0]] if i + 1 < len(nodes) else []}
    return {"title": sentence(rng, 5), "create_time": 1.7e9, "update_time": 1.7e9, "mapping": mapping,
            "current_node": nodes[-1][0], "conversation_id": f"conv-{index}", "id": f"conv-{index}",
            "moderation_results": [], "safe_urls": [], "is_archived": False}


def write_export(path: Path, megabytes: float, seed: int = 0) -> int:
    """A minified array of conversations, as ChatGPT exports it; returns how many."""
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    count = written = 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[")
        while written < target:
            text = ("," if count else "") + json.dumps(conversation(rng, count), separators=(",", ":"))
            handle.write(text)
            written += len(text)
            count += 1
        handle.write("]")
    return count


CONVERT = """
import json, resource, sys, time
from agentfast.data import convert
start = time.perf_counter()
report = convert(sys.argv[1], sys.argv[2], format="chatgpt_export")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "episodes": len(report.episodes), "records": report.records,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "counts": report.to_dict()}))
"""
JSON_LOAD = """
import json, resource, sys, time
start = time.perf_counter()
json.load(open(sys.argv[1], encoding="utf-8"))
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
BASELINE = """
import json, resource
import agentfast.data
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--keep", default=None, help="write the export here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.keep or Path(folder) / "conversations.json")
        started = time.perf_counter()
        count = write_export(path, args.megabytes)
        size = path.stat().st_size
        print(f"generated {count} conversations, {size / 1e6:.1f} MB in {time.perf_counter() - started:.1f}s")
        converted = run(CONVERT, str(path), str(Path(folder) / "episodes.jsonl"))
        whole = run(JSON_LOAD, str(path))
        imports = run(BASELINE)
    seconds = converted["seconds"]
    print(f"convert: {converted['records']} conversations -> {converted['episodes']} episodes in {seconds:.1f}s: "
          f"{converted['records'] / seconds:,.0f} records/s, {size / 1e6 / seconds:.1f} MB/s")
    print(f"json.load of the whole file (parsing only, same machine, same run): {whole['seconds']:.1f}s; "
          f"convert takes {seconds / whole['seconds']:.1f}x as long")
    print(f"peak RSS: convert {converted['peak_kb'] / 1024:.0f} MiB (importing agentfast alone: "
          f"{imports['peak_kb'] / 1024:.0f} MiB); json.load of the whole file: {whole['peak_kb'] / 1024:.0f} MiB")
    print(f"report: {converted['counts']}")


if __name__ == "__main__":
    main()
