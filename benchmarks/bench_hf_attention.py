"""Training step of a Llama-style transformers model: attn_implementation agentfast vs sdpa vs eager.

    python benchmarks/bench_hf_attention.py                     # this CPU, seq 512,1024,2048
    python benchmarks/bench_hf_attention.py --device cuda       # GPU (bf16), as make gpu-check runs it
    python benchmarks/bench_hf_attention.py --mask agents --seq-lens 1024

The model (4 layers, hidden 512, 8 query heads sharing 2 key/value heads, random weights
from a config) trains on padded batches of random tokens: rows are 50-100% full, padded
on the right (``--padding left`` for the other side). Every sequence length gets the same
number of token slots per step (``--tokens``), so the batch shrinks as sequences grow (to
two rows at the least, the first one full). A
timed step is forward, loss, backward and AdamW; each implementation trains its own copy
of the same initial weights on the same batches. Implementations are measured
round-robin (``--rounds`` rounds of ``--steps`` steps) so load from other processes hits
them alike; reported are the median round in real (non-padding) tokens per second and the
median over rounds of the ratio to sdpa in the same round.

``--mask agents`` adds three agents per row with a random visibility matrix: agentfast
gets ``agent_ids`` / ``agent_visibility``; sdpa and eager get the same rule as a 4-D mask
(the only way they can express it), built once per batch outside the timed step.

The report names the ``agentfast.attention`` backend(s) the agentfast runs used underneath
at each sequence length (``auto`` picks per call); a call that would fall back to
transformers' attention skips the implementation instead of timing the fallback.

Writes ``<name>.json`` and ``<name>.md`` (``--name``, default ``hf_attention`` or
``hf_attention_agents``) to --out (default benchmarks/results/<device slug>/).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

import agentfast.integrations.transformers  # noqa: E402,F401  (registers "agentfast")
from agentfast.attention import api as attention_api  # noqa: E402
from agentfast.attention.mask import dense_mask  # noqa: E402
from agentfast.integrations.transformers import AttentionFallbackWarning  # noqa: E402
from harness import machine, results_dir, sync, write_results  # noqa: E402

NUM_AGENTS = 3


def make_batches(args: argparse.Namespace, seq_len: int, count: int, generator: torch.Generator) -> list[dict]:
    """Padded batches of random tokens (and agents), on the device."""
    batch_size = max(2, args.tokens // seq_len)  # two rows at least, so there is padding
    batches = []
    for _ in range(count):
        lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=generator)
        lengths[0] = seq_len  # one full row, so the batch really is seq_len long
        positions = torch.arange(seq_len)[None, :]
        valid = positions < lengths[:, None] if args.padding == "right" else positions >= seq_len - lengths[:, None]
        input_ids = torch.randint(3, args.vocab, (batch_size, seq_len), generator=generator).masked_fill(~valid, 0)
        batch = {"input_ids": input_ids, "attention_mask": valid.long(),
                 "labels": input_ids.masked_fill(~valid, -100)}
        if args.padding == "left":
            batch["position_ids"] = (valid.long().cumsum(1) - 1).clamp(min=0)
        if args.mask == "agents":
            # Turns of 16-64 tokens, each taken by a random agent.
            agent_ids = torch.empty(batch_size, seq_len, dtype=torch.long)
            for row in range(batch_size):
                start = 0
                while start < seq_len:
                    turn = int(torch.randint(16, 65, (1,), generator=generator))
                    agent_ids[row, start:start + turn] = int(torch.randint(0, NUM_AGENTS, (1,), generator=generator))
                    start += turn
            visibility = torch.rand(batch_size, NUM_AGENTS, NUM_AGENTS, generator=generator) < 0.6
            visibility |= torch.eye(NUM_AGENTS, dtype=torch.bool)
            batch.update(agent_ids=agent_ids, agent_visibility=visibility)
        batches.append({k: v.to(args.device) for k, v in batch.items()})
    return batches


def four_d_mask(batch: dict, dtype: torch.dtype) -> torch.Tensor:
    """The agentfast rule (causal, padding, agents) as the additive mask eager and sdpa take."""
    valid = batch["attention_mask"].bool()
    size, n = valid.shape
    allowed = dense_mask(size, n, n, valid.device, causal=True, agent_ids=batch["agent_ids"],
                         visibility=batch["agent_visibility"]) & valid[:, None, None, :]
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def model_inputs(batch: dict, implementation: str, dtype: torch.dtype) -> dict:
    if "agent_ids" not in batch:
        return batch
    if implementation.startswith("agentfast"):
        return batch
    plain = {k: v for k, v in batch.items() if k not in ("agent_ids", "agent_visibility")}
    return dict(plain, attention_mask=four_d_mask(batch, dtype))


@contextlib.contextmanager
def recording_backends(chosen: set[str]):
    """Collect the names of the backends ``agentfast.attention`` picks meanwhile."""
    select = attention_api.select_backend

    def recording(call, backend="auto"):
        picked = select(call, backend)
        chosen.add(picked.name)
        return picked

    attention_api.select_backend = recording
    try:
        yield
    finally:
        attention_api.select_backend = select


def timed_round(model, optimizer, batches: list[dict], device: str) -> tuple[int, float]:
    sync(device)
    tokens, started = 0, time.perf_counter()
    for batch, inputs in batches:
        loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    sync(device)
    return tokens, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=max(args.seq_lens),
                         pad_token_id=0, attention_dropout=0.0)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(args.device, dtype)
    generator = torch.Generator().manual_seed(0)
    rows, skipped = [], {}
    for seq_len in args.seq_lens:
        batches = make_batches(args, seq_len, args.warmup + args.steps, generator)
        runners = {}
        underneath: dict[str, str] = {}  # the agentfast.attention backends each implementation used at seq_len
        for implementation in args.implementations:
            model = copy.deepcopy(base)
            model.set_attn_implementation(implementation)
            model.train()
            prepared = [(b, model_inputs(b, implementation, dtype)) for b in batches]
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
            chosen: set[str] = set()
            try:
                with warnings.catch_warnings(), recording_backends(chosen):
                    warnings.simplefilter("error", AttentionFallbackWarning)  # measure agentfast, not a fallback
                    timed_round(model, optimizer, prepared[:args.warmup], args.device)
            except (torch.OutOfMemoryError, RuntimeError, AttentionFallbackWarning) as error:
                skipped[f"{implementation}@{seq_len}"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                print(f"seq {seq_len:5d} {implementation:<10} skipped: {skipped[f'{implementation}@{seq_len}']}",
                      flush=True)
                continue
            runners[implementation] = (model, optimizer, prepared[args.warmup:])
            underneath[implementation] = ",".join(sorted(chosen))
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, (model, optimizer, timed) in runners.items():
                tokens, seconds = timed_round(model, optimizer, timed, args.device)
                rates[name].append(tokens / seconds)
        batch_size = batches[0]["input_ids"].shape[0]
        for name, measured in rates.items():
            rate = statistics.median(measured)
            # Per-round ratios: the implementations of one round ran back to back, under the same load.
            ratio = statistics.median(r / s for r, s in zip(measured, rates["sdpa"])) if "sdpa" in rates else None
            rows.append({"seq_len": seq_len, "batch_size": batch_size, "implementation": name,
                         "tokens_per_s": round(rate, 1), "vs_sdpa": round(ratio, 3) if ratio else None,
                         "rounds": [round(r, 1) for r in measured], "backends": underneath.get(name, "")})
            print(f"seq {seq_len:5d} x{batch_size:<3d} {name:<10} {rate:10.1f} tokens/s"
                  + (f"  {ratio:5.2f}x sdpa" if ratio else "") + (f"  [{underneath[name]}]" if underneath[name] else ""),
                  flush=True)
        del runners
    return {
        "machine": {**machine(args.device), "transformers": __import__("transformers").__version__,
                    "cpus": os.cpu_count()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows, "skipped": skipped,
    }


def cell(row: dict[str, Any]) -> str:
    text = f"{row['tokens_per_s']:.0f}" + (f" ({row['vs_sdpa']:.2f}x)" if row["vs_sdpa"] else "")
    return text + (f" [{row['backends']}]" if row.get("backends") else "")


def markdown(report: dict[str, Any]) -> str:
    settings, host = report["settings"], report["machine"]
    implementations = list(dict.fromkeys(r["implementation"] for r in report["rows"]))
    lines = [f"transformers Llama-style training step ({settings['layers']} layers, hidden {settings['hidden']}, "
             f"{settings['heads']} q / {settings['kv_heads']} kv heads, {settings['dtype']}, "
             f"{settings['padding']} padding, mask: {settings['mask']}), real tokens/s "
             f"(x sdpa) on {host['device']}"
             + (f" ({host['cpus']} CPUs, {host['threads']} threads)" if settings["device"] == "cpu" else "")
             + f", torch {host['torch']}, "
             f"transformers {host['transformers']}", "",
             "Median of rounds; (x sdpa) is the median of per-round ratios to sdpa; [backend] is the "
             "agentfast.attention backend underneath.", "",
             "| seq | batch | " + " | ".join(implementations) + " |", "|---|---|" + "---|" * len(implementations)]
    for seq_len in dict.fromkeys(r["seq_len"] for r in report["rows"]):
        cells = {r["implementation"]: r for r in report["rows"] if r["seq_len"] == seq_len}
        batch = next(iter(cells.values()))["batch_size"]
        shown = [cell(cells[i]) if i in cells else "-" for i in implementations]
        lines.append(f"| {seq_len} | {batch} | " + " | ".join(shown) + " |")
    if report["skipped"]:
        lines += ["", "Not measured: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--seq-lens", default="512,1024,2048", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--tokens", type=int, default=4096, help="token slots per batch (batch = tokens / seq, at least 2)")
    parser.add_argument("--padding", default="right", choices=("right", "left"))
    parser.add_argument("--mask", default="padding", choices=("padding", "agents"))
    parser.add_argument("--implementations", default="agentfast,sdpa,eager", type=lambda s: s.split(","))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device slug>)")
    parser.add_argument("--name", default=None, help="file name stem (default hf_attention[_agents])")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.name is None:
        args.name = "hf_attention" + ("_agents" if args.mask == "agents" else "")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    write_results(results_dir(args.device, args.out), args.name, report, markdown(report))
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
