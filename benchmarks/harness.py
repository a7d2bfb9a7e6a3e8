"""What the benchmarks here share: naming the device, timing, counting attention FLOPs and
writing results.

Every benchmark writes ``NAME.json`` (its numbers and the machine) and ``NAME.md`` (the
table a reader looks at) into ``benchmarks/results/<device slug>/`` unless told ``--out``;
the slug is the GPU's name, or ``cpu-`` and the CPU model, so runs on one machine land in
one folder whichever benchmark made them.
"""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# A fused attention backward does about 2.5x the forward's matrix products (FlashAttention-2's count).
BACKWARD_FLOP_RATIO = 2.5


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def device_slug(device: str) -> str:
    """The results folder of ``device``: e.g. ``nvidia-h100-80gb-hbm3``, ``cpu-amd-epyc``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device).split(",")[0]).strip("-").lower()
    return slug if str(device).startswith("cuda") else f"cpu-{slug}"


def device_label(device: str) -> tuple[str, str]:
    """(a readable name, with the thread count on CPU; the results folder slug)."""
    name = device_name(device)
    if not str(device).startswith("cuda"):
        name = f"{name}, {torch.get_num_threads()} threads"
    return name, device_slug(device)


def machine(device: str) -> dict:
    """What a result file says about where it was measured."""
    return {"device": device_name(device), "platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def results_dir(device: str, out: str | Path | None = None) -> Path:
    """``out`` if given, else ``benchmarks/results/<device slug>``; created."""
    folder = Path(out) if out else RESULTS / device_slug(device)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(folder: Path, name: str, report: dict, markdown: str) -> tuple[Path, Path]:
    """``folder/NAME.json`` and ``folder/NAME.md``; returns both paths."""
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown.rstrip("\n") + "\n")
    return json_path, md_path


def sync(device: str) -> None:
    """Wait for queued GPU work, so a wall clock measures it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one ``fn()``, GPU work included."""
    sync(device)
    started_cpu, started = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started, time.process_time() - started_cpu


def attention_flops(batch: int, heads: int, num_queries: int, keys_per_query: float, head_dim: int,
                    *, backward: bool = False) -> float:
    """Matrix-product FLOPs of attention: 4 B H Nq N_eff D for the forward (QK^T and PV), where
    N_eff is the keys a query may attend (averaged; masked keys are not work a kernel must do),
    and (1 + 2.5) times that for forward + backward."""
    flops = 4.0 * batch * heads * num_queries * keys_per_query * head_dim
    return flops * (1.0 + BACKWARD_FLOP_RATIO) if backward else flops
