"""agentfast.nn.MultiheadAttention against torch.nn.MultiheadAttention inside torch's own
TransformerEncoder: one training step (forward, loss, backward, AdamW), side by side.

    python benchmarks/bench_multihead_attention.py                      # B=8, N=128..1024, this CPU
    python benchmarks/bench_multihead_attention.py --n 256 --configs causal+padding --rounds 3

The model is what a user writes: ``nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model,
nhead, dim_feedforward, dropout, batch_first=True), num_layers)``; the drop-in replaces each
layer's ``self_attn`` (same weights). Inputs: ``[B, N, d_model]`` with right padding (valid
lengths uniform in [N/2, N], one full row) and torch's float causal mask
(``generate_square_subsequent_mask``) with ``is_causal=True``, the way TransformerEncoder
itself flags a causal mask. The loss covers valid positions only.

Configurations (``--configs``, each ``MASKS[@dropout]``): masks ``causal+padding``,
``causal``, ``padding`` or ``none``; dropout defaults to --dropout. Attention dropout while
training sends the drop-in to its dense path (its kernels have no dropout), so
``causal+padding@0.1`` (torch's default dropout) checks that this path is no slower.

Both models train round-robin (``--rounds`` rounds; each round times --steps steps of each
model after they have all warmed up), so load from other processes hits them alike; the
median round is reported, with the ratio torch / drop-in (> 1: the drop-in is faster), and
the process CPU time per step beside the wall clock (the work done, which other processes
on a shared machine disturb less). The first forward of each configuration also compares
the two models' outputs.

Writes ``multihead_attention.json`` and ``.md`` (``--name``) to --out, by default
``benchmarks/results/<device slug>/`` (named as bench_attention.py names it).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import device_label, results_dir, write_results  # noqa: E402

from agentfast.nn import MultiheadAttention  # noqa: E402

IMPLEMENTATIONS = ("torch", "agentfast")


@dataclass
class Row:
    config: str
    n: int
    torch_ms: float
    agentfast_ms: float
    speedup: float  # torch / agentfast, wall clock
    torch_cpu_ms: float  # process CPU time per step: the work, less sensitive to other load
    agentfast_cpu_ms: float
    max_output_diff: float
    valid_fraction: float


def build_models(args: argparse.Namespace, dropout: float) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(args.d_model, args.heads, args.dim_feedforward, dropout, batch_first=True)
    theirs = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False)
    ours = copy.deepcopy(theirs)
    for old in ours.layers:
        new = MultiheadAttention(args.d_model, args.heads, dropout=dropout, batch_first=True)
        new.load_state_dict(old.self_attn.state_dict())
        old.self_attn = new
    return {"torch": theirs.train(), "agentfast": ours.train()}


def make_batch(args: argparse.Namespace, n: int, masks: str) -> dict:
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(args.batch, n, args.d_model, generator=generator)
    target = torch.randn(args.batch, n, args.d_model, generator=generator)
    lengths = torch.randint(n // 2, n + 1, (args.batch,), generator=generator)
    lengths[0] = n
    padding = torch.arange(n)[None, :] >= lengths[:, None]
    kwargs: dict = {}
    if "padding" in masks:
        kwargs["src_key_padding_mask"] = padding
    else:
        padding = torch.zeros_like(padding)
    if "causal" in masks:
        # bool like the padding mask (torch warns when the two differ)
        kwargs["mask"] = torch.ones(n, n, dtype=torch.bool).triu(1)
        kwargs["is_causal"] = True
    return dict(x=x, target=target, valid=~padding, kwargs=kwargs)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> torch.Tensor:
    out = model(batch["x"], **batch["kwargs"])
    loss = (out - batch["target"])[batch["valid"]].pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out


def measure(args: argparse.Namespace, masks: str, dropout: float, n: int) -> Row:
    models = build_models(args, dropout)
    batch = make_batch(args, n, masks)
    # Eval mode (no dropout) with gradients on, so torch's inference fast path stays out of it.
    eval_out = {}
    for name, model in models.items():
        eval_out[name] = model.train(False)(batch["x"], **batch["kwargs"]).detach()
        model.train(True)
    valid = batch["valid"]
    diff = float((eval_out["torch"][valid] - eval_out["agentfast"][valid]).abs().max())
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    for name in IMPLEMENTATIONS:
        for _ in range(args.warmup):
            train_step(models[name], optimizers[name], batch)
    wall: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    cpu: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for round_index in range(args.rounds):
        # Alternate the order so neither model always runs right after the other's steps.
        order = IMPLEMENTATIONS if round_index % 2 == 0 else IMPLEMENTATIONS[::-1]
        for name in order:
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                train_step(models[name], optimizers[name], batch)
            wall[name].append((time.perf_counter() - started) / args.steps * 1e3)
            cpu[name].append((time.process_time() - started_cpu) / args.steps * 1e3)
    torch_ms, ours_ms = statistics.median(wall["torch"]), statistics.median(wall["agentfast"])
    config = masks if dropout == 0 else f"{masks}@{dropout:g}"
    return Row(config, n, torch_ms, ours_ms, torch_ms / ours_ms, statistics.median(cpu["torch"]),
               statistics.median(cpu["agentfast"]), diff, float(valid.float().mean()))


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [
        f"# MultiheadAttention drop-in vs torch, TransformerEncoder training step ({meta['device']})",
        "",
        f"{meta['layers']} layers, d_model {meta['d_model']}, {meta['heads']} heads, dim_feedforward "
        f"{meta['dim_feedforward']}, B={meta['batch']}, float32, torch {meta['torch']}, "
        f"{meta['threads']} threads. Median of {meta['rounds']} round-robin rounds of {meta['steps']} step(s) per "
        "step; speedup = torch ms / agentfast ms (wall clock). CPU ms is the process's CPU time per step, "
        f"the work done. Load average (1 min) at start and end: {meta['load_start']} and {meta['load_end']}.",
        "",
    ]
    for config in dict.fromkeys(r.config for r in rows):
        lines += [f"## {config}", "",
                  "| N | torch ms | agentfast ms | speedup | torch CPU ms | agentfast CPU ms | CPU ratio | max output diff |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r.config == config):
            lines.append(f"| {r.n} | {r.torch_ms:.1f} | {r.agentfast_ms:.1f} | {r.speedup:.2f}x | {r.torch_cpu_ms:.1f} "
                         f"| {r.agentfast_cpu_ms:.1f} | {r.torch_cpu_ms / r.agentfast_cpu_ms:.2f}x "
                         f"| {r.max_output_diff:.1e} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="128,256,512,1024", help="comma-separated sequence lengths")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim-feedforward", type=int, default=1024, help="default 4 * d_model")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout of configs that name none")
    parser.add_argument("--configs", default="causal+padding,none,causal+padding@0.1",
                        help="comma-separated MASKS[@dropout]; MASKS: causal+padding, causal, padding, none")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--name", default="multihead_attention", help="file stem of the results")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device slug>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name, _ = device_label("cpu")
    out_dir = results_dir("cpu", args.out)
    rows = []
    load_start = os.getloadavg()[0]
    for config in args.configs.split(","):
        masks, _, dropout = config.partition("@")
        if masks not in ("causal+padding", "causal", "padding", "none"):
            print(f"bench_multihead_attention: unknown masks {masks!r} in --configs")
            return 2
        for n in (int(v) for v in args.n.split(",")):
            row = measure(args, masks, float(dropout) if dropout else args.dropout, n)
            print(f"{row.config:20s} N={n:<5d} torch {row.torch_ms:9.1f} ms  agentfast {row.agentfast_ms:9.1f} ms  "
                  f"speedup {row.speedup:5.2f}x  (CPU {row.torch_cpu_ms:9.1f} / {row.agentfast_cpu_ms:9.1f} ms)  "
                  f"max diff {row.max_output_diff:.1e}", flush=True)
            rows.append(row)
    meta = dict(device=device_name, torch=torch.__version__, threads=torch.get_num_threads(), batch=args.batch,
                d_model=args.d_model, heads=args.heads, layers=args.layers, dim_feedforward=args.dim_feedforward,
                steps=args.steps, rounds=args.rounds, load_start=round(load_start, 1),
                load_end=round(os.getloadavg()[0], 1))
    write_results(out_dir, args.name, dict(meta=meta, rows=[asdict(r) for r in rows]), markdown(rows, meta))
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
