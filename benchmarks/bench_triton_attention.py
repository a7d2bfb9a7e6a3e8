"""Triton fused attention: the autotuner's choices and their speed, beside SDPA.

For each (N, D, mask) it times forward and forward+backward of ``backend="triton"`` and
``backend="sdpa"``, and records the block sizes the autotuner picked for each kernel. The
backend comparison across every backend lives in ``bench_attention.py``; this one is for
tuning the Triton kernels themselves.

    python benchmarks/bench_triton_attention.py [--n 512,2048,8192] [--d 64] [--out DIR]

Masks: causal, and agents: 8 agents speaking in turns of varied length (about 64 tokens;
``agentfast.attention.benchmark.agent_turns``) under the hub visibility, with the share of
causal's 128 x 128 tiles that layout leaves empty (``tiles_skipped``).

TFLOP/s counts 4 * B * H * Nq * N_eff * D for the forward (N_eff: keys a query may attend,
averaged) and 2.5x that for the backward. Needs CUDA; without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import agentfast  # noqa: E402
from agentfast.attention import dense_mask  # noqa: E402
from agentfast.attention.benchmark import agent_turns, tile_occupancy  # noqa: E402
from agentfast.attention.backends.triton_fused import load_kernels  # noqa: E402
from agentfast.visibility import visibility_preset  # noqa: E402
from harness import attention_flops, device_name, machine, write_results  # noqa: E402

AGENTS = 8  # the agents mask: 8 agents speaking in turns of varied length, the hub visibility
MEAN_TURN = 64


def make_inputs(batch: int, heads: int, n: int, d: int, masked: bool):
    q, k, v = (torch.randn(batch, heads, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    mask = dict(causal=True)
    if masked:
        mask.update(agent_ids=agent_turns(batch, n, AGENTS, MEAN_TURN).to("cuda"),
                    agent_visibility=visibility_preset("hub", AGENTS, device="cuda"))
    return q, k, v, mask


def keys_per_query(n: int, mask: dict) -> float:
    visibility = mask.get("agent_visibility")
    allowed = dense_mask(1, n, n, torch.device("cuda"), causal=True,
                         agent_ids=mask["agent_ids"][:1] if visibility is not None else None,
                         visibility=visibility[None] if visibility is not None else None)
    return allowed.float().sum().item() / n


def time_ms(fn, warmup: int = 3, iters: int = 10) -> float:
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def measure(backend: str, q, k, v, mask: dict) -> dict:
    grad = torch.randn_like(q)

    def forward():
        with torch.no_grad():
            agentfast.attention(q, k, v, backend=backend, **mask)

    def forward_backward():
        out = agentfast.attention(q, k, v, backend=backend, **mask)
        torch.autograd.grad(out, (q, k, v), grad)

    torch.cuda.reset_peak_memory_stats()
    result = {"forward_ms": time_ms(forward), "forward_backward_ms": time_ms(forward_backward)}
    result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def chosen_configs() -> dict[str, str]:
    kernels = load_kernels().flash_attention
    picked = {}
    for name in ("_forward_kernel", "_dq_kernel", "_dkdv_kernel"):
        best = getattr(getattr(kernels, name), "best_config", None)
        picked[name] = str(best) if best is not None else "?"
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--d", default="32,64,128")
    parser.add_argument("--tokens", type=int, default=32768, help="B * N per run (batch shrinks as N grows)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="folder for triton_attention.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton_attention: needs a CUDA device; nothing measured.")
        return 0
    rows = []
    for d in (int(x) for x in args.d.split(",")):
        for n in (int(x) for x in args.n.split(",")):
            for masked in (False, True):
                batch = max(1, args.tokens // n)
                q, k, v, mask = make_inputs(batch, args.heads, n, d, masked)
                keys = keys_per_query(n, mask)
                flops, flops_both = (attention_flops(batch, args.heads, n, keys, d, backward=b) for b in (False, True))
                row = {"n": n, "d": d, "batch": batch, "mask": "agents" if masked else "causal"}
                if masked:
                    row["tiles_skipped"] = tile_occupancy(mask["agent_ids"], mask["agent_visibility"]).skipped
                for backend in ("triton", "sdpa"):
                    timing = measure(backend, q, k, v, mask)
                    timing["forward_tflops"] = flops / timing["forward_ms"] / 1e9
                    timing["forward_backward_tflops"] = flops_both / timing["forward_backward_ms"] / 1e9
                    row[backend] = timing
                row["triton_configs"] = chosen_configs()
                rows.append(row)
                t, s = row["triton"], row["sdpa"]
                print(f"D={d:<4} N={n:<6} {row['mask']:<7} triton fwd {t['forward_ms']:.3f} ms "
                      f"({t['forward_tflops']:.0f} TF/s) f+b {t['forward_backward_ms']:.3f} ms | sdpa fwd "
                      f"{s['forward_ms']:.3f} f+b {s['forward_backward_ms']:.3f} | "
                      f"speedup f+b {s['forward_backward_ms'] / t['forward_backward_ms']:.2f}x", flush=True)
    report = {"device": device_name("cuda"), "machine": machine("cuda"), "rows": rows}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_results(args.out, "triton_attention", report, markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [f"# Triton fused attention against SDPA on {report['device']} (bf16, causal; agents: {AGENTS} "
             "agents in turns, hub visibility)", "",
             "| D | N | batch | mask | tiles skipped | triton fwd ms (TFLOP/s) | triton f+b ms (TFLOP/s) "
             "| sdpa fwd ms | sdpa f+b ms | f+b speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        t, s = row["triton"], row["sdpa"]
        skipped = f"{row['tiles_skipped']:.0%}" if "tiles_skipped" in row else "-"
        lines.append(f"| {row['d']} | {row['n']} | {row['batch']} | {row['mask']} | {skipped} "
                     f"| {t['forward_ms']:.3f} ({t['forward_tflops']:.0f}) "
                     f"| {t['forward_backward_ms']:.3f} ({t['forward_backward_tflops']:.0f}) "
                     f"| {s['forward_ms']:.3f} | {s['forward_backward_ms']:.3f} "
                     f"| {s['forward_backward_ms'] / t['forward_backward_ms']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
