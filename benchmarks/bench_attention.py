"""Attention backends head to head: time, TFLOP/s and peak extra memory, forward and forward+backward.

    python benchmarks/bench_attention.py --device cpu                 # cpp vs sdpa vs reference
    python benchmarks/bench_attention.py --device cuda                # cuda vs triton vs flex vs sdpa
    python benchmarks/bench_attention.py --device cpu --n 1024,2048 --masks agents --modes fwd+bwd
    python benchmarks/bench_attention.py --device cpu --masks turns --turns-n 2048 --agents 4,8

Backends are named as ``agentfast.attention`` names them (any registered backend plugs in with
no edit here), plus ``sdpa_mask``: torch SDPA with the rule materialised as a boolean mask even
where the ``sdpa`` backend would use torch's own causal path.

Mask kinds:
  causal  causal-only attention over all keys.
  agents  causal + agent visibility: 4 agents take turns of --turn tokens round-robin; agent 0
          is a hub that sees everyone, the others see themselves and the hub.
  turns   multi-agent layouts as episodes have them: agents speak in turns of varied length
          (log-uniform in [turn/4, 4*turn] tokens, the next speaker any other agent; see
          agentfast.attention.benchmark.agent_turns), for each number of agents in --agents
          and each visibility preset in --presets (hub: agent 0 sees everyone and everyone
          sees it; private: each agent sees itself; full: everyone sees everyone), at the
          lengths --turns-n. Each is reported beside causal-only attention at the same length:
          the share of causal's 128 x 128 tiles the mask leaves empty (what a block-sparse
          kernel skips), the share it leaves partial, and the time against causal-only on the
          same backend (x causal).

Time: the median wall clock of a call; beside it the median process CPU time (all threads),
whose ratio to causal-only the load of other processes on a shared CPU disturbs less
(--threads sets torch's CPU threads).

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
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch
import torch.nn.functional as F

import agentfast
from agentfast.attention import dense_mask, get_backend, make_call
from agentfast.attention.benchmark import TILE, TileOccupancy, agent_turns, tile_occupancy
from agentfast.visibility import PRESETS, visibility_preset
from harness import attention_flops, device_label, results_dir, sync, write_results  # noqa: E402

DEFAULTS = {
    "cpu": dict(backends="cpp,sdpa_mask,sdpa,reference", n="256,512,1024,2048,4096", d="64",
                dtype="float32", batch=2, heads=4, turns_n="2048"),
    "cuda": dict(backends="cuda,triton,flex,sdpa,sdpa_mask,reference", n="512,1024,2048,4096,8192,16384",
                 d="32,64,128", dtype="bfloat16", batch=2, heads=8, turns_n="8192"),
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
    agents: int = NUM_AGENTS
    preset: str = "hub"

    @property
    def label(self) -> str:
        return f"turns, {self.agents} agents, {self.preset}" if self.mask == "turns" else self.mask

    def agent_layout(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(agent_ids [B, N], visibility [A, A]) on the CPU, or None for causal-only."""
        if self.mask == "agents":
            turn = torch.arange(self.length) // self.turn
            ids = torch.stack([(turn + b) % NUM_AGENTS for b in range(self.batch)])
            return ids, visibility_preset("hub", NUM_AGENTS)
        if self.mask == "turns":
            return agent_turns(self.batch, self.length, self.agents, self.turn), visibility_preset(self.preset, self.agents)
        return None

    def tensors(self, requires_grad: bool):
        generator = torch.Generator(device="cpu").manual_seed(0)
        shape = (self.batch, self.heads, self.length, self.head_dim)
        q, k, v = (torch.randn(shape, generator=generator).to(self.device, self.dtype).requires_grad_(requires_grad)
                   for _ in range(3))
        kwargs: dict = dict(causal=True)
        layout = self.agent_layout()
        if layout is not None:
            kwargs.update(agent_ids=layout[0].to(self.device), agent_visibility=layout[1].to(self.device))
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

def measure(fn, problem: Problem, backward: bool, min_repeats: int, budget_s: float) -> tuple[float, float, int]:
    """Median seconds per call, median process CPU seconds per call (all threads) and peak
    extra bytes of one call."""
    return measure_together([(fn, problem)], backward, min_repeats, budget_s)[0]


def measure_together(calls: list[tuple], backward: bool, min_repeats: int,
                     budget_s: float) -> list[tuple[float, float, int]]:
    """``measure`` for several (fn, problem) pairs timed in turns, one call of each per round,
    so a change in the machine's load falls on all of them alike (their ratios hold)."""
    steps = [_one_call(fn, problem, backward) for fn, problem in calls]
    device = calls[0][1].device
    peaks = []
    for step in steps:
        step()  # warm-up (and compilation for compiled backends)
        sync(device)
        with PeakMemory(device) as memory:
            step()
        peaks.append(memory.peak_bytes)
    times: list[list[float]] = [[] for _ in steps]
    cpu_times: list[list[float]] = [[] for _ in steps]
    started = time.perf_counter()
    rounds = 0
    while rounds < min_repeats or (time.perf_counter() - started < budget_s * len(steps) and rounds < 50):
        for i, step in enumerate(steps):
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            sync(device)
            times[i].append(time.perf_counter() - t0)
            cpu_times[i].append(time.process_time() - c0)
        rounds += 1
    return [(statistics.median(t), statistics.median(c), peak) for t, c, peak in zip(times, cpu_times, peaks)]


def _one_call(fn, problem: Problem, backward: bool):
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

    return once


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
    agents: int | None = None  # turns layouts: the number of agents and their visibility preset
    preset: str | None = None
    tiles_skipped: float | None = None  # shares of causal-only attention's tiles
    tiles_partial: float | None = None
    vs_causal: float | None = None  # time / causal-only's time (same backend, N, D, mode)
    cpu_ms: float | None = None  # process CPU time per call (all threads)
    cpu_vs_causal: float | None = None  # the same ratio of CPU times (CPU runs: less disturbed by load)


def markdown(rows: list[Row], title: str, device: str = "cuda") -> str:
    lines = [f"# {title}", ""]
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.mask != "turns":
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
    return "\n".join(lines + layout_markdown(rows, device))


def layout_markdown(rows: list[Row], device: str) -> list[str]:
    """One table per (mode, D, dtype, N) of the turns layouts against causal-only."""
    layouts = [r for r in rows if r.mask == "turns"]
    if not layouts:
        return []
    on_cpu = device == "cpu"
    lines = ["## Multi-agent turn layouts against causal-only", "",
             f"Tiles: {TILE} x {TILE} (query, key) tiles as shares of causal-only attention's; skipped "
             "tiles hold no allowed pair, partial ones need the mask. Time: ms, and in brackets the "
             "time over causal-only's on the same backend"
             + (" (wall clock; and of the process's CPU time, which the load of other processes on a "
                "shared machine disturbs less)" if on_cpu else "") + ".", ""]
    for key in dict.fromkeys((r.mode, r.d, r.dtype, r.n) for r in layouts):
        mode, d, dtype, n = key
        group = [r for r in layouts if (r.mode, r.d, r.dtype, r.n) == key]
        causal = [r for r in rows if r.mask == "causal" and (r.mode, r.d, r.dtype, r.n) == key]
        backends = list(dict.fromkeys(r.backend for r in group))
        lines += [f"### {mode}, D={d}, {dtype}, N={n}", "",
                  "| agents | visibility | tiles skipped | tiles partial | " + " | ".join(backends) + " |",
                  "|---|---|---|---|" + "---|" * len(backends)]
        cells = [_time_cell(next((r for r in causal if r.backend == b), None), ratio=False) for b in backends]
        partial = f"{causal[0].tiles_partial:.0%}" if causal and causal[0].tiles_partial is not None else ""
        lines.append(f"| causal only | - | 0% | {partial} | " + " | ".join(cells) + " |")
        for agents, preset in dict.fromkeys((r.agents, r.preset) for r in group):
            same = [r for r in group if (r.agents, r.preset) == (agents, preset)]
            first = same[0]
            cells = [_time_cell(next((r for r in same if r.backend == b), None), ratio=True, show_cpu=on_cpu)
                     for b in backends]
            lines.append(f"| {agents} | {preset} | {first.tiles_skipped:.0%} | {first.tiles_partial:.0%} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _time_cell(row: Row | None, ratio: bool, show_cpu: bool = False) -> str:
    if row is None:
        return ""
    if row.ms is None:
        return row.note
    if ratio and row.vs_causal is not None:
        cpu = f"; CPU time {row.cpu_vs_causal:.2f}x" if row.cpu_vs_causal is not None and show_cpu else ""
        return f"{row.ms:.2f} ({row.vs_causal:.2f}x{cpu})"
    return f"{row.ms:.2f}"


def plot(rows: list[Row], path: Path, cpu_time: bool = False) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    groups = sorted({(r.mask, r.mode, r.d) for r in rows if r.mask != "turns"})
    layout_groups = sorted({(r.mode, r.d, r.n) for r in rows if r.mask == "turns" and r.vs_causal is not None})
    panels = len(groups) + len(layout_groups)
    if panels == 0:
        return
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    for ax, key in zip(axes[0][len(groups):], layout_groups):
        plot_layouts(ax, [r for r in rows if r.mask == "turns" and (r.mode, r.d, r.n) == key], *key, cpu_time)
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


def plot_layouts(ax, rows: list[Row], mode: str, d: int, n: int, cpu_time: bool) -> None:
    """Time over causal-only per turns layout (bars per backend; CPU runs: process CPU time)
    and the share of tiles left."""
    layouts = list(dict.fromkeys((r.agents, r.preset) for r in rows))
    backends = list(dict.fromkeys(r.backend for r in rows))
    width = 0.8 / (len(backends) + 1)
    for i, backend in enumerate(backends):
        ratios = [next((r.cpu_vs_causal if r.cpu_vs_causal is not None and cpu_time else r.vs_causal
                        for r in rows if (r.agents, r.preset, r.backend) == (*layout, backend)
                        and r.vs_causal is not None), float("nan")) for layout in layouts]
        ax.bar([x + i * width for x in range(len(layouts))], ratios, width, label=backend)
    left = [1 - next(r.tiles_skipped for r in rows if (r.agents, r.preset) == layout) for layout in layouts]
    ax.bar([x + len(backends) * width for x in range(len(layouts))], left, width, color="0.75",
           label="tiles left")
    ax.axhline(1.0, color="k", linewidth=0.6)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(layouts))],
                  [f"{a} {p}" for a, p in layouts], rotation=45, ha="right", fontsize=7)
    ax.set(title=f"turns vs causal, {mode}, D={d}, N={n}", ylabel="x causal" + (" (CPU time)" if cpu_time else ""))
    ax.legend(fontsize=7)


def measure_problems(problems: list[Problem], mode: str, backends: list[str], args) -> list[Row]:
    """One row per problem and backend; each backend times the problems together, in turns
    (``measure_together``), so their ratios hold on a loaded machine."""
    rows = {id(problem): [] for problem in problems}
    occupancies = {id(problem): _occupancy(problem) for problem in problems}
    for backend in backends:
        timed = []
        for problem in problems:
            row = _new_row(problem, backend, mode, occupancies[id(problem)])
            rows[id(problem)].append(row)
            reason = why_not(backend, problem)
            if reason is None and backend in ("reference", "sdpa_mask") and dense_bytes(problem) > memory_budget(problem.device):
                reason = "skipped: would not fit in memory"
            if reason is not None:
                row.note = "n/a" if "skipped" not in reason else "OOM-skip"
                print(f"{_tag(problem, mode)} {backend:10s} {reason}", flush=True)
            else:
                timed.append((problem, row))
        if not timed:
            continue
        try:
            results = measure_together([(runner(backend), problem) for problem, _ in timed], mode == "fwd+bwd",
                                       args.repeats, args.budget)
        except Exception as exc:  # one broken backend must not end the sweep
            note = "OOM" if isinstance(exc, torch.OutOfMemoryError) else f"error: {type(exc).__name__}"
            for problem, row in timed:
                row.note = note
            print(f"{_tag(timed[0][0], mode)} {backend:10s} {exc!r}", flush=True)
            results = []
        for (problem, row), (seconds, cpu_seconds, peak) in zip(timed, results):
            flops = attention_flops(problem.batch, problem.heads, problem.length, problem.effective_keys(),
                                    problem.head_dim, backward=mode == "fwd+bwd")
            row.ms, row.cpu_ms = seconds * 1e3, cpu_seconds * 1e3
            row.tflops, row.peak_mib = flops / seconds / 1e12, peak / 2**20
            print(f"{_tag(problem, mode)} {backend:10s} {row.ms:9.2f} ms {row.tflops:7.3f} TFLOP/s "
                  f"{row.peak_mib:8.1f} MiB", flush=True)
        if problems[0].device == "cuda":
            torch.cuda.empty_cache()
    return [row for problem in problems for row in rows[id(problem)]]


def _tag(problem: Problem, mode: str) -> str:
    return f"{problem.label:24s} {mode:7s} D={problem.head_dim:<3d} N={problem.length:<6d}"


def _occupancy(problem: Problem) -> TileOccupancy:
    # causal-only: one agent who sees itself
    ids, visibility = problem.agent_layout() or (torch.zeros(1, problem.length, dtype=torch.long),
                                                 torch.ones(1, 1, dtype=torch.bool))
    return tile_occupancy(ids.to(problem.device), visibility)


def _new_row(problem: Problem, backend: str, mode: str, occupancy: TileOccupancy) -> Row:
    row = Row(backend, problem.mask, mode, problem.length, problem.head_dim, str(problem.dtype)[6:], None, None, None)
    if problem.mask == "turns":
        row.agents, row.preset = problem.agents, problem.preset
    row.tiles_skipped, row.tiles_partial = occupancy.skipped, occupancy.partial
    return row


def compare_with_causal(rows: list[Row]) -> None:
    """Set ``vs_causal`` of every agent-masked row timed beside a causal-only one."""
    causal = {(r.backend, r.mode, r.n, r.d, r.dtype): r for r in rows if r.mask == "causal" and r.ms}
    for row in rows:
        baseline = causal.get((row.backend, row.mode, row.n, row.d, row.dtype))
        if row.mask != "causal" and row.ms is not None and baseline is not None:
            row.vs_causal = row.ms / baseline.ms
            if row.cpu_ms and baseline.cpu_ms:
                row.cpu_vs_causal = row.cpu_ms / baseline.cpu_ms


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", help="comma-separated backend names (default depends on device)")
    parser.add_argument("--n", help="comma-separated sequence lengths")
    parser.add_argument("--d", help="comma-separated head dims")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--masks", default="causal,agents,turns", help="causal, agents and/or turns")
    parser.add_argument("--modes", default="fwd,fwd+bwd", help="fwd and/or fwd+bwd")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--turn", type=int, default=128,
                        help="tokens per agent turn (agents mask); the mean scale of turns (turns mask)")
    parser.add_argument("--agents", default="2,4,8", help="numbers of agents of the turns layouts")
    parser.add_argument("--presets", default=",".join(("hub", "private", "full")),
                        help=f"visibility presets of the turns layouts (of {', '.join(PRESETS)})")
    parser.add_argument("--turns-n", help="sequence lengths of the turns layouts (default: cpu 2048, cuda 8192)")
    parser.add_argument("--repeats", type=int, default=3, help="minimum timed repeats")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads; default: torch's)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per point")
    parser.add_argument("--name", default="attention", help="file stem of the results (NAME.json/.md/.png)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_attention: --device cuda but no CUDA device is available")
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = DEFAULTS[args.device]
    backends = (args.backends or defaults["backends"]).split(",")
    lengths = [int(x) for x in (args.n or defaults["n"]).split(",")]
    head_dims = [int(x) for x in (args.d or defaults["d"]).split(",")]
    dtype = getattr(torch, args.dtype or defaults["dtype"])
    batch, heads = args.batch or defaults["batch"], args.heads or defaults["heads"]
    name, _ = device_label(args.device)
    out_dir = results_dir(args.device, args.out)
    print(f"device: {name}; B={batch} H={heads} {dtype}", flush=True)

    masks = args.masks.split(",")
    unknown = sorted(set(masks) - {"causal", "agents", "turns"})
    if unknown:
        raise SystemExit(f"bench_attention: unknown mask kind(s) {', '.join(unknown)}; choose causal, agents, turns")
    layouts = [(int(a), preset) for a in args.agents.split(",") for preset in args.presets.split(",")]
    turns_lengths = [int(x) for x in (args.turns_n or defaults["turns_n"]).split(",")]
    rows: list[Row] = []
    for d in head_dims:
        for mode in args.modes.split(","):
            for mask in masks:
                for n in lengths if mask != "turns" else []:
                    problem = Problem(args.device, dtype, batch, heads, n, d, mask, args.turn)
                    if not (mask == "causal" and "turns" in masks and n in turns_lengths):
                        rows += measure_problems([problem], mode, backends, args)
            for n in turns_lengths if "turns" in masks else []:
                # causal-only beside the layouts, timed in turns with them: the baseline of "x causal"
                group = [Problem(args.device, dtype, batch, heads, n, d, "causal", args.turn)]
                group += [Problem(args.device, dtype, batch, heads, n, d, "turns", args.turn, agents, preset)
                          for agents, preset in layouts]
                rows += measure_problems(group, mode, backends, args)
    compare_with_causal(rows)

    meta = dict(device=name, torch=torch.__version__, dtype=str(dtype)[6:], batch=batch, heads=heads,
                turn=args.turn, agents=NUM_AGENTS, threads=torch.get_num_threads(), tile=TILE,
                turns=dict(agents=args.agents, presets=args.presets, lengths=turns_lengths,
                           turn_tokens=f"log-uniform in [{args.turn / 4:g}, {4 * args.turn}]")
                if "turns" in masks else None)
    title = f"Attention benchmark on {name} (B={batch}, H={heads}, {str(dtype)[6:]}, torch {torch.__version__})"
    write_results(out_dir, args.name, dict(meta=meta, rows=[asdict(r) for r in rows]), markdown(rows, title, args.device))
    plot(rows, out_dir / f"{args.name}.png", cpu_time=args.device == "cpu")
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
