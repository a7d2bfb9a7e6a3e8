"""``make gpu-check``: every GPU test and benchmark in one command, results left in files.

GPU machines are rare and short-lived, so one visit must verify everything: the build,
the GPU test tier, the kernel benchmarks and the model (training throughput) benchmarks.
Each step's output goes to ``benchmarks/results/<device>/``; a failing step is recorded and
the next one still runs. Without a CUDA device it prints why and exits 0.

    python benchmarks/gpu_check.py [--quick] [--skip tests,bench_training] [--time-limit 450]

The default time limit leaves room for the build inside one 10-minute command; a step cut short keeps
what it printed in its log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def device_slug() -> str:
    import torch

    name = torch.cuda.get_device_name(0)
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def steps(out_dir: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """The steps, most important first: correctness, then the D=64 sweep the targets are
    stated for, then model throughput (agentfast's models, then a transformers Llama-style
    model), autotuning, and the other head dims."""
    python = sys.executable
    lengths = ["--n", "512,2048,8192"] if quick else []
    attention = [python, "benchmarks/bench_attention.py", "--device", "cuda", "--out", str(out_dir), *lengths]
    return [
        ("info", [python, "-m", "agentfast.info"]),
        # The CUDA kernels' CPU emulation has nothing to add where they run for real.
        ("tests", [python, "-m", "pytest", "-q", "-rs", "tests", "-k", "not emulated",
                   f"--junitxml={out_dir / 'tests.xml'}"]),
        ("bench_attention_d64", [*attention, "--d", "64", "--budget", "0.3", "--name", "attention_d64"]),
        ("bench_training", [python, "benchmarks/bench_training.py", "--device", "cuda",
                            "--models", "action,multi_agent,hierarchical", "--out", str(out_dir)]),
        ("bench_hf_attention", [python, "benchmarks/bench_hf_attention.py", "--device", "cuda",
                                "--out", str(out_dir)]),
        ("bench_triton_attention", [python, "benchmarks/bench_triton_attention.py", "--out", str(out_dir)]),
        ("bench_attention_d32_d128", [*attention, "--d", "32,128", "--budget", "0.2",
                                      "--name", "attention_d32_d128"]),
    ]


def run_step(name: str, command: list[str], out_dir: Path, seconds_left: float) -> dict:
    """Run one step with its output in ``<name>.log``; a step past the time left is stopped
    (its log keeps every line printed so far)."""
    started = time.time()
    log_path = out_dir / f"{name}.log"
    print(f"==> {name}: {' '.join(command)}", flush=True)
    with log_path.open("w") as log:
        try:
            returncode = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                        timeout=max(seconds_left, 1)).returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout"
    seconds = round(time.time() - started, 1)
    tail = log_path.read_text().splitlines()[-3:]
    print(f"    exit {returncode} in {seconds}s; " + " | ".join(tail), flush=True)
    return {"step": name, "returncode": returncode, "seconds": seconds, "log": log_path.name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a shorter attention sweep")
    parser.add_argument("--skip", default="", help="comma-separated step names to skip")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<device>)")
    parser.add_argument("--time-limit", type=float, default=450,
                        help="seconds for all steps together; later steps are cut short or skipped past it")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing to do.")
        return 0
    out_dir = args.out or ROOT / "benchmarks" / "results" / device_slug()
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = set(filter(None, args.skip.split(",")))
    summary = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "steps": [],
    }
    deadline = time.time() + args.time_limit
    for name, command in steps(out_dir, args.quick):
        if name in skipped:
            continue
        if time.time() >= deadline:
            summary["steps"].append({"step": name, "returncode": "not run: time limit", "seconds": 0})
            continue
        summary["steps"].append(run_step(name, command, out_dir, deadline - time.time()))
    (out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    failed = [s["step"] for s in summary["steps"] if s["returncode"] != 0]
    print(f"gpu-check: results in {out_dir}; " + (f"FAILED: {', '.join(failed)}" if failed else "all steps passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
