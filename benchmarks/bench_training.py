"""Training throughput (timesteps/s) per attention backend, side by side in one run.

    python benchmarks/bench_training.py                         # demo-sized models, this CPU
    python benchmarks/bench_training.py --models action,multi_agent,hierarchical --steps 30
    agentfast bench training -- --device cuda --batch-size 64   # same script through the CLI

Every backend that can serve the models' attention on the device trains the same model
(same initial weights) on the same synthetic batches, shaped like the bundled example
data embedded with all-MiniLM-L6-v2 (384-d states and actions, episodes of 3-17 steps,
padded windows, several agents, options and rewards). A timed step is one full
``Trainer.train_step``: forward, losses, backward, clipping, AdamW, schedule. Backends
are measured round-robin (``--rounds`` rounds of ``--steps`` steps each) so that load from
other processes hits them alike; the median round is reported. A timestep is one valid
(state, action) pair of a batch; padding is not counted.

Writes ``<name>.json`` and ``<name>.md`` (``--name``, default ``training``) to --out
(default benchmarks/results/<device slug>/, as bench_attention.py). The checked-in CPU results were made with
``--threads 1 --models action,multi_agent,hierarchical`` (demo-sized) and
``--threads 1 --models action,multi_agent --max-seq-len 256 --episode-len 256 --batch-size 4
--name training_long`` (long episodes, where attention dominates).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from agentfast.attention import backend_names, get_backend, make_call  # noqa: E402
from agentfast.data import collate_episodes  # noqa: E402
from agentfast.training import TrainConfig, Trainer, build_model  # noqa: E402
from agentfast.training.modeling import move_batch  # noqa: E402
from harness import machine, results_dir, sync, write_results  # noqa: E402

NUM_AGENTS, NUM_OPTIONS = 3, 6


def synthetic_items(count: int, dim: int, max_len: int, generator: torch.Generator) -> list[dict[str, Any]]:
    """Windows shaped like collate_episodes' input: unit-norm embeddings, agents, options."""
    items = []
    for index in range(count):
        steps = int(torch.randint(3, max_len + 1, (1,), generator=generator))
        states = torch.nn.functional.normalize(torch.randn(steps, dim, generator=generator), dim=-1)
        actions = torch.nn.functional.normalize(torch.randn(steps, dim, generator=generator), dim=-1)
        rewards = torch.zeros(steps)
        rewards[-1] = 1.0
        items.append({
            "states": states, "actions": actions,
            "action_ids": torch.randint(0, 28, (steps,), generator=generator),
            "agent_ids": torch.randint(0, NUM_AGENTS, (steps,), generator=generator),
            "options": torch.randint(0, NUM_OPTIONS, (steps,), generator=generator),
            "has_options": True, "rewards": rewards,
            "returns_to_go": 0.99 ** torch.arange(steps - 1, -1, -1).float(), "has_rewards": True,
            "target_mask": torch.ones(steps, dtype=torch.bool), "timesteps": torch.arange(steps),
            "agent_visibility": torch.ones(NUM_AGENTS, NUM_AGENTS, dtype=torch.bool),
            "task_type": "synthetic", "episode_index": index, "window_start": 0,
        })
    return items


def usable_backends(device: str, embed_dim: int, num_heads: int) -> tuple[list[str], dict[str, str]]:
    """Backends that serve a padded, agent-masked call of the models' head size on ``device``."""
    head_dim = embed_dim // num_heads
    q = torch.zeros(2, num_heads, 8, head_dim, device=device)
    call = make_call(q, q, q, causal=True, seq_lens=torch.tensor([8, 5], device=device),
                     agent_ids=torch.zeros(2, 8, dtype=torch.long, device=device),
                     agent_visibility=torch.ones(NUM_AGENTS, NUM_AGENTS, dtype=torch.bool, device=device))
    usable, skipped = [], {}
    for name in backend_names():
        reason = get_backend(name).why_not(call)
        if name == "triton" and device == "cpu" and reason is None:
            reason = "the Triton interpreter (TRITON_INTERPRET=1) checks correctness, not speed"
        if reason is None:
            usable.append(name)
        else:
            skipped[name] = reason
    return usable, skipped


def make_trainer(model_type: str, backend: str, args: argparse.Namespace, dataset: list) -> Trainer:
    config = TrainConfig(model_type=model_type, embed_dim=args.embed_dim, num_layers=args.num_layers,
                         num_heads=args.num_heads, hidden_dim=args.hidden_dim,
                         max_seq_len=args.max_seq_len, attn_backend=backend, batch_size=args.batch_size,
                         precision=args.precision, max_steps=10**9, eval_every=10**9, dropout=0.1)
    torch.manual_seed(0)
    model = build_model(config, state_dim=args.dim, action_dim=args.dim, num_agents=NUM_AGENTS,
                        num_options=NUM_OPTIONS)
    return Trainer(model, config, dataset, None, device=args.device, progress=False)


def timed_round(trainer: Trainer, batches: list[dict[str, Any]], device: str) -> tuple[int, float]:
    timesteps, started = 0, time.perf_counter()
    for batch in batches:
        trainer.train_step(batch)
        timesteps += int(batch["valid_mask"].sum())
    sync(device)
    return timesteps, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    items = synthetic_items(args.batch_size * (args.steps + args.warmup), args.dim,
                            min(args.episode_len, args.max_seq_len), generator)
    batches = [move_batch(collate_episodes(items[i:i + args.batch_size]), args.device)
               for i in range(0, len(items), args.batch_size)]
    warmup, timed = batches[:args.warmup], batches[args.warmup:]
    backends, skipped = usable_backends(args.device, args.embed_dim, args.num_heads)
    if args.backends:
        wanted = args.backends.split(",")
        skipped.update({b: "not requested" for b in backends if b not in wanted})
        backends = [b for b in backends if b in wanted]
    rows = []
    for model_type in args.models.split(","):
        trainers = {b: make_trainer(model_type, b, args, items) for b in backends}
        for trainer in trainers.values():
            for batch in warmup:
                trainer.train_step(batch)
        rounds: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(args.rounds):
            for backend, trainer in trainers.items():
                timesteps, seconds = timed_round(trainer, timed, args.device)
                rounds[backend].append(timesteps / seconds)
        for backend in backends:
            rate = statistics.median(rounds[backend])
            rows.append({"model": model_type, "backend": backend, "timesteps_per_s": round(rate, 1),
                         "rounds": [round(r, 1) for r in rounds[backend]]})
            print(f"{model_type:<13} {backend:<10} {rate:10.1f} timesteps/s", flush=True)
    return {
        "machine": machine(args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows, "skipped": skipped,
    }


def markdown(report: dict[str, Any]) -> str:
    backends = list(dict.fromkeys(r["backend"] for r in report["rows"]))
    models = list(dict.fromkeys(r["model"] for r in report["rows"]))
    rate = {(r["model"], r["backend"]): r["timesteps_per_s"] for r in report["rows"]}
    lines = [f"Training throughput, timesteps/s ({report['machine']['device']}, "
             f"{report['machine']['threads']} threads, torch {report['machine']['torch']})", "",
             "| model | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(f"{rate[(model, b)]:.0f}" for b in backends) + " |")
    if report["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="action", help="comma-separated: action,multi_agent,hierarchical")
    parser.add_argument("--backends", default="", help="comma-separated subset (default: all usable)")
    parser.add_argument("--dim", type=int, default=384, help="state/action embedding size")
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--max-seq-len", type=int, default=24)
    parser.add_argument("--episode-len", type=int, default=17,
                        help="longest synthetic episode in steps (lengths are uniform from 3)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device slug>)")
    parser.add_argument("--name", default="training", help="file name stem of the results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    write_results(results_dir(args.device, args.out), args.name, report, markdown(report))
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
