"""Attention backends head to head: time, TFLOP/s and peak extra memory, forward and forward+backward.

    python benchmarks/bench_attention.py --device cpu                 # cpp vs sdpa vs reference
    python benchmarks/bench_attention.py --device cuda                # cuda vs triton vs flex vs sdpa
    python benchmarks/bench_attention.py --device cpu --n 1024,2048 --masks agents --modes fwd+bwd

Backends are named as ``agentfast.attention`` names them (any registered backend plugs in with
no edit here), plus ``sdpa_mask``: torch SDPA with the rule materialised as a boolean mask even
where the ``sdpa`` backend would use torch's own causal path.

Mask kinds:
  causal  causal-only attention over all keys.
  agents  causal + agent visibility: 4 agents take turns of --turn tokens round-robin; agent 0
          is a hub that sees everyone, the others see themselves and the hub.

FLOPs count the allowed (query, key) pairs: 4 * B * H * Nq * N_eff * D for the forward, where
N_eff is the mean number of keys a query may attend; the backward counts 2.5x the forward.
Peak memory is the peak extra memory over the inputs during one call (CUDA: the caching
allocator's peak; CPU: the process's peak resident set, reset through /proc/self/clear_refs,
with glibc told to unmap large blocks at free() while measuring, so the peak is honest).

Writes ``NAME.json`` and ``NAME.md`` (and ``NAME.png`` when matplotlib is installed; NAME is
--name, default ``attention``) to --out, by default ``benchmarks/results/<device>/``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F

import agentfast
from agentfast.attention import dense_mask, get_backend, make_call

DEFAULTS = {
    "cpu": dict(backends="cpp,sdpa_mask,sdpa,reference", n="256,512,1024,2048,4096", d="64",
                dtype="float32", batch=2, heads=4),
    "cuda": dict(backends="cuda,triton,flex,sdpa,sdpa_mask,reference", n="512,1024,2048,4096,8192,16384",
                 d="32,64,128", dtype="bfloat16", batch=2, heads=8),
}
NUM_AGENTS = 4


@dataclass
class Problem:
    device: str
    dtype: torch.dtype
    batch: int
    heads: int
    length: int
    head_dim: int
    mask: str
    turn: int

    def tensors(self, requires_grad: bool):
        generator = torch.Generator(device="cpu").manual_seed(0)
        shape = (self.batch, self.heads, self.length, self.head_dim)
        q, k, v = (torch.randn(shape, generator=generator).to(self.device, self.dtype).requires_grad_(requires_grad)
                   for _ in range(3))
        kwargs: dict = dict(causal=True)
        if self.mask == "agents":
            turn = torch.arange(self.length) // self.turn
            ids = torch.stack([(turn + b) % NUM_AGENTS for b in range(self.batch)]).to(self.device)
            visibility = torch.eye(NUM_AGENTS, dtype=torch.bool)
            visibility[0] = True  # the hub sees everyone
            visibility[:, 0] = True  # everyone sees the hub
            kwargs.update(agent_ids=ids, agent_visibility=visibility.to(self.device))
        return q, k, v, kwargs

    def effective_keys(self) -> float:
        q, k, v, kwargs = self.tensors(False)
        call = make_call(q[:, :1], k[:, :1], v[:, :1], **kwargs)
        allowed = dense_mask(self.batch, self.length, self.length, torch.device(self.device), causal=True,
                             agent_ids=call.agent_ids, visibility=call.visibility)
        return allowed.float().sum().item() / (self.batch * self.length)


def sdpa_with_mask(q, k, v, **kwargs):
    """torch SDPA with the rule materialised as a boolean mask (what a user would write)."""
    call = make_call(q, k, v, **kwargs)
    allowed = dense_mask(q.shape[0], q.shape[2], k.shape[2], q.device, causal=call.causal,
                         seq_lens=call.seq_lens, agent_ids=call.agent_ids, visibility=call.visibility)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=call.scale)


def runner(name: str):
    if name == "sdpa_mask":
        return sdpa_with_mask
    return lambda q, k, v, **kwargs: agentfast.attention(q, k, v, backend=name, **kwargs)


def why_not(name: str, problem: Problem) -> str | None:
    if name == "sdpa_mask":
        return None
    q, k, v, kwargs = problem.tensors(False)
    return get_backend(name).why_not(make_call(q, k, v, **kwargs))


# --- memory -------------------------------------------------------------------------------

def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _set_mmap_threshold(nbytes: int) -> None:
    """glibc serves blocks above this size with mmap and unmaps them at free(). A low value
    while measuring makes the resident-set peak honest (freed blocks of an earlier backend
    cannot be silently reused); a high one while timing keeps the heap's reuse, as in a
    long-running process."""
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, nbytes)
        libc.malloc_trim(0)


class PeakMemory:
    """Peak extra bytes allocated inside the ``with`` block."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self):
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            _set_mmap_threshold(64 << 10)
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self._start = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            self.peak_bytes = _rss_kib("VmHWM") * 1024 - self._start
            _set_mmap_threshold(32 << 20)
        return False


# --- timing -------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, problem: Problem, backward: bool, min_repeats: int, budget_s: float) -> tuple[float, int]:
    """Median seconds per call and peak extra bytes of one call."""
    q, k, v, kwargs = problem.tensors(backward)
    grad = torch.randn_like(q) if backward else None

    def once():
        if backward:
            out = fn(q, k, v, **kwargs)
            out.backward(grad)
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad():
                fn(q, k, v, **kwargs)

    once()  # warm-up (and compilation for compiled backends)
    sync(problem.device)
    with PeakMemory(problem.device) as memory:
        once()
    times = []
    started = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - started < budget_s and len(times) < 50):
        sync(problem.device)
        t0 = time.perf_counter()
        once()
        sync(problem.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), memory.peak_bytes


def dense_bytes(problem: Problem) -> int:
    """Rough peak of a backend that materialises a few [B, H, N, N] fp32 matrices."""
    return 8 * problem.batch * problem.heads * problem.length**2 * 4


def memory_budget(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free * 0.8)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 // 3
    return 8 << 30


# --- report -------------------------------------------------------------------------------

@dataclass
class Row:
    backend: str
    mask: str
    mode: str
    n: int
    d: int
    dtype: str
    ms: float | None
    tflops: float | None
    peak_mib: float | None
    note: str = ""


def device_label(device: str) -> tuple[str, str]:
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or "cpu"
        for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        name = f"{name}, {torch.get_num_threads()} threads"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name.split(",")[0]).strip("-").lower()
    return name, (slug if device == "cuda" else f"cpu-{slug}")


def markdown(rows: list[Row], title: str) -> str:
    lines = [f"# {title}", ""]
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.mask, row.mode, row.d, row.dtype), []).append(row)
    for (mask, mode, d, dtype), group in groups.items():
        backends = list(dict.fromkeys(r.backend for r in group))
        lengths = sorted({r.n for r in group})
        lines += [f"## {mask}, {mode}, D={d}, {dtype}", "",
                  "| N | " + " | ".join(f"{b} ms (TFLOP/s, MiB)" for b in backends) + " |",
                  "|---|" + "---|" * len(backends)]
        for n in lengths:
            cells = []
            for b in backends:
                r = next((r for r in group if r.backend == b and r.n == n), None)
                if r is None or r.ms is None:
                    cells.append(r.note if r else "")
                else:
                    cells.append(f"{r.ms:.2f} ({r.tflops:.3f}, {r.peak_mib:.0f})")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    groups = sorted({(r.mask, r.mode, r.d) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False)
    for ax, (mask, mode, d) in zip(axes[0], groups):
        for backend in dict.fromkeys(r.backend for r in rows):
            pts = sorted((r.n, r.ms) for r in rows if (r.mask, r.mode, r.d, r.backend) == (mask, mode, d, backend)
                         and r.ms is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=backend)
        ax.set(title=f"{mask}, {mode}, D={d}", xlabel="N", ylabel="ms", xscale="log", yscale="log")
        sizes = sorted({r.n for r in rows})
        ax.set_xticks(sizes, [str(n) for n in sizes])  # plain N labels instead of 2x10^3 clutter
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", help="comma-separated backend names (default depends on device)")
    parser.add_argument("--n", help="comma-separated sequence lengths")
    parser.add_argument("--d", help="comma-separated head dims")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--masks", default="causal,agents", help="causal and/or agents")
    parser.add_argument("--modes", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--turn", type=int, default=128, help="tokens per agent turn (agents mask)")
    parser.add_argument("--repeats", type=int, default=3, help="minimum timed repeats")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per point")
    parser.add_argument("--name", default="attention", help="file stem of the results (NAME.json/.md/.png)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_attention: --device cuda but no CUDA device is available")
        return 1
    defaults = DEFAULTS[args.device]
    backends = (args.backends or defaults["backends"]).split(",")
    lengths = [int(x) for x in (args.n or defaults["n"]).split(",")]
    head_dims = [int(x) for x in (args.d or defaults["d"]).split(",")]
    dtype = getattr(torch, args.dtype or defaults["dtype"])
    batch, heads = args.batch or defaults["batch"], args.heads or defaults["heads"]
    name, slug = device_label(args.device)
    out_dir = args.out or ROOT / "benchmarks" / "results" / slug
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"device: {name}; B={batch} H={heads} {dtype}", flush=True)

    rows: list[Row] = []
    for mask in args.masks.split(","):
        for d in head_dims:
            for mode in args.modes.split(","):
                for n in lengths:
                    problem = Problem(args.device, dtype, batch, heads, n, d, mask, args.turn)
                    flops = 4 * batch * heads * n * problem.effective_keys() * d * (3.5 if mode == "fwd+bwd" else 1.0)
                    for backend in backends:
                        row = Row(backend, mask, mode, n, d, str(dtype)[6:], None, None, None)
                        reason = why_not(backend, problem)
                        if reason is None and backend in ("reference", "sdpa_mask") and dense_bytes(problem) > memory_budget(args.device):
                            reason = "skipped: would not fit in memory"
                        if reason is not None:
                            row.note = "n/a" if "skipped" not in reason else "OOM-skip"
                            print(f"{mask:6s} {mode:7s} D={d:<3d} N={n:<6d} {backend:10s} {reason}", flush=True)
                        else:
                            try:
                                seconds, peak = measure(runner(backend), problem, mode == "fwd+bwd", args.repeats, args.budget)
                                row.ms, row.tflops, row.peak_mib = seconds * 1e3, flops / seconds / 1e12, peak / 2**20
                                print(f"{mask:6s} {mode:7s} D={d:<3d} N={n:<6d} {backend:10s} {row.ms:9.2f} ms "
                                      f"{row.tflops:7.3f} TFLOP/s {row.peak_mib:8.1f} MiB", flush=True)
                            except torch.OutOfMemoryError:
                                row.note = "OOM"
                            except Exception as exc:  # one broken backend must not end the sweep
                                row.note = f"error: {type(exc).__name__}"
                                print(f"{mask:6s} {mode:7s} D={d:<3d} N={n:<6d} {backend:10s} {exc!r}", flush=True)
                            if args.device == "cuda":
                                torch.cuda.empty_cache()
                        rows.append(row)

    meta = dict(device=name, torch=torch.__version__, dtype=str(dtype)[6:], batch=batch, heads=heads,
                turn=args.turn, agents=NUM_AGENTS, threads=torch.get_num_threads())
    (out_dir / f"{args.name}.json").write_text(json.dumps(dict(meta=meta, rows=[asdict(r) for r in rows]), indent=1) + "\n")
    title = f"Attention benchmark on {name} (B={batch}, H={heads}, {str(dtype)[6:]}, torch {torch.__version__})"
    (out_dir / f"{args.name}.md").write_text(markdown(rows, title) + "\n")
    plot(rows, out_dir / f"{args.name}.png")
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
