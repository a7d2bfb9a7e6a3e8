"""``make gpu-check``: the build, every GPU test and the GPU benchmarks in one command that
fits one visit to a GPU machine (15 minutes in all, machine start included; one command of at
most 8 minutes; at most 8 files come back).

    python benchmarks/gpu_check.py --out DIR     # results packed as DIR/gpu-check.tar.gz
    python benchmarks/gpu_check.py --dry-run     # every step's setup only, on any machine

Steps, in order, each with a time budget in seconds (together 430, well inside 8 minutes):

    build            compile agentfast._C for this GPU's architecture only, on every core
    info             versions, build, and which attention backends serve calls here
    tests            the GPU test tier (pytest -m gpu)
    attention_causal the D=64 bf16 sweep, causal: triton, cuda, flex, sdpa; fwd and fwd+bwd
    attention_agents the same with agent masks
    training         the model benchmarks (training throughput of the three policies)
    hf_attention     a transformers Llama-style model's training step, bf16:
                     attn_implementation agentfast against sdpa and eager

A step may run until the time the later steps' budgets need begins, so one that ends early
leaves its time to the next. A step past its time is stopped (its whole process group) and
keeps what it printed in its log; the next step still runs. Optional steps (a longer sweep,
other head dims, Triton's autotune report) use whatever time is left, the D=64
sweep over multi-agent turn layouts first. Results: each step's
log and the benchmarks' own files (JSON, Markdown, plots), a JUnit report of the tests and
gpu_check.json (the steps' exit codes and times), packed as <device>/... in
DIR/gpu-check.tar.gz; without --out they are copied to benchmarks/results/<device>/.

The dry run does what each step does before its real work, on CPU as well: the build's
configuration (setup.py with the CUDA build switches; ninja present), the info report, the
collection of the GPU tests (pytest --collect-only), and each benchmark's imports and
argument parsing (the script runs until it has parsed its arguments); then it packs the
archive. It prints every step's budget next to the time its setup took.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

STARTED = time.monotonic()  # the time limit counts from here, imports included
ROOT = Path(__file__).resolve().parent.parent
TOTAL_LIMIT = 480           # seconds one command may take on the GPU machine
PACK_RESERVE = 20           # seconds kept for stopping an overrunning step and packing
MIN_OPTIONAL_SECONDS = 30   # an optional step starts only with this much time left
ATTENTION_D64 = ["--device", "cuda", "--backends", "triton,cuda,flex,sdpa", "--d", "64",
                 "--dtype", "bfloat16", "--modes", "fwd,fwd+bwd", "--budget", "0.2"]
ATTENTION_LENGTHS = ["--n", "1024,4096,16384"]


@dataclass
class Step:
    name: str
    budget: float                      # seconds; 0 for optional steps
    command: list[str]
    dry_command: list[str]             # the step's setup only
    env: dict[str, str] = field(default_factory=dict)

    @property
    def optional(self) -> bool:
        return self.budget == 0


def plan(results: Path, arch: str) -> list[Step]:
    """The steps, most important first: the build, correctness, the D=64 sweep the targets
    are stated for, model throughput (agentfast's policies, then a transformers Llama-style
    model); then the optional extras."""
    python = sys.executable
    this = str(Path(__file__).resolve())

    def script(name: str, path: str, budget: float, *args: str) -> Step:
        return Step(name, budget, [python, path, *args], [python, this, "--parse-only", path, *args])

    build_env = {"AGENTFAST_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count() or 1)}
    tests = [python, "-m", "pytest", "tests", "-m", "gpu", "-p", "no:cacheprovider"]
    workers = min(8, os.cpu_count() or 1)
    run_tests = [*tests, "-v", "-rs", f"--junitxml={results / 'tests.xml'}"]
    if importlib.util.find_spec("xdist") is not None and workers > 1:
        run_tests += ["-n", str(workers)]  # the tests mostly wait for kernel compiles: overlap them
    if importlib.util.find_spec("pytest_timeout") is not None:
        run_tests += ["--timeout", "120"]  # a hung kernel costs one test, not the step
    attention = "benchmarks/bench_attention.py"
    return [
        Step("build", 165, [python, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "-e", "."],
             [python, "-c", "from torch.utils.cpp_extension import verify_ninja_availability as v; v(); "
                            "import runpy, sys; sys.argv = ['setup.py', '--name']; runpy.run_path('setup.py')"],
             env=build_env),
        Step("info", 10, [python, "-m", "agentfast.info"], [python, "-m", "agentfast.info"]),
        Step("tests", 85, run_tests, [*tests, "--collect-only", "-q"]),
        script("attention_causal", attention, 50, *ATTENTION_D64, *ATTENTION_LENGTHS, "--masks", "causal",
               "--name", "attention_d64_causal", "--out", str(results)),
        script("attention_agents", attention, 50, *ATTENTION_D64, *ATTENTION_LENGTHS, "--masks", "agents",
               "--name", "attention_d64_agents", "--out", str(results)),
        script("training", "benchmarks/bench_training.py", 40, "--device", "cuda",
               "--models", "action,multi_agent,hierarchical", "--out", str(results)),
        script("hf_attention", "benchmarks/bench_hf_attention.py", 30, "--device", "cuda",
               "--out", str(results)),
        # Optional, with the time left: multi-agent turn layouts first (2, 4, 8 agents under
        # the hub, private and full presets, each against causal-only at the same length).
        script("attention_turns", attention, 0, *ATTENTION_D64, "--masks", "turns",
               "--name", "attention_d64_turns", "--out", str(results)),
        script("attention_d64_long", attention, 0, "--device", "cuda", "--d", "64",
               "--n", "512,2048,8192", "--masks", "causal,agents", "--budget", "0.2",
               "--name", "attention_d64_more_lengths",
               "--out", str(results)),
        script("triton_autotune", "benchmarks/bench_triton_attention.py", 0, "--d", "64",
               "--out", str(results)),
        script("attention_d32_d128", attention, 0, "--device", "cuda", "--d", "32,128",
               "--n", "1024,4096,16384", "--masks", "causal,agents", "--budget", "0.2",
               "--name", "attention_d32_d128",
               "--out", str(results)),
    ]


# ----------------------------------------------------------------------------- running

def run_step(step: Step, command: list[str], log_path: Path, seconds: float) -> tuple[int | str, float]:
    """Run ``command`` with its output in ``log_path``; past ``seconds`` its process group is
    stopped (SIGTERM, then SIGKILL), and the log keeps every line printed so far."""
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    with log_path.open("w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        try:
            returncode: int | str = process.wait(timeout=max(seconds, 1))
        except subprocess.TimeoutExpired:
            _stop(process)
            returncode = "timeout"
            log.write(f"\ngpu-check: stopped after {seconds:.0f} s (its time budget)\n")
    return returncode, time.monotonic() - started


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_lines(path: Path, count: int = 2) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(line[:160] for line in lines[-count:])


def run_plan(steps: list[Step], results: Path, dry_run: bool, time_limit: float, skip: set[str],
             started: float = STARTED) -> list[dict]:
    """Run the steps in order; each may run until the later required steps' budgets begin."""
    required = [s for s in steps if not s.optional and s.name not in skip]
    deadline = started + time_limit - PACK_RESERVE
    scale = min(1.0, (deadline - time.monotonic()) / max(sum(s.budget for s in required), 1))
    records = []
    for step in steps:
        if step.name in skip:
            continue
        later = sum(s.budget for s in required if steps.index(s) > steps.index(step)) * scale
        seconds = deadline - later - time.monotonic()
        budget = step.budget * scale
        if step.optional and seconds < MIN_OPTIONAL_SECONDS:
            records.append({"step": step.name, "budget_s": 0, "returncode": "not run: no time left", "seconds": 0})
            print(f"--- {step.name}: not run, {max(seconds, 0):.0f} s left", flush=True)
            continue
        command = step.dry_command if dry_run else step.command
        print(f"==> {step.name} (budget {budget:.0f} s, may run {seconds:.0f} s): {' '.join(command)}", flush=True)
        log_path = results / f"{step.name}.log"
        returncode, took = run_step(step, command, log_path, seconds)
        print(f"    exit {returncode} in {took:.1f} s; {last_lines(log_path)}", flush=True)
        records.append({"step": step.name, "budget_s": round(budget), "returncode": returncode,
                        "seconds": round(took, 1), "log": log_path.name})
    return records


def pack(results: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(results, arcname=results.name)


def print_table(records: list[dict], dry_run: bool) -> None:
    heading = "setup s" if dry_run else "took s"
    print(f"\n{'step':20s} {'budget s':>8s} {heading:>8s}  result")
    for r in records:
        print(f"{r['step']:20s} {r['budget_s']:8d} {r['seconds']:8.1f}  {r['returncode']}")
    print(f"{'total':20s} {sum(r['budget_s'] for r in records):8d} {sum(r['seconds'] for r in records):8.1f}")


# ----------------------------------------------------------------------------- dry run

class _ArgumentsParsed(Exception):
    pass


def parse_only(script: str, argv: list[str]) -> int:
    """Run ``script`` as __main__ until it has parsed ``argv`` (its imports and argument checks
    run; its work does not)."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _ArgumentsParsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_and_stop
    sys.argv = [script, *argv]
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    except _ArgumentsParsed as parsed:
        print(f"{script}: arguments accepted: {vars(parsed.args[0])}")
        return 0
    finally:
        argparse.ArgumentParser.parse_args = original
    print(f"{script} ended without parsing arguments")
    return 1


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu-check.tar.gz and gpu-check.json (default: results copied "
                             "to benchmarks/results/<device>/)")
    parser.add_argument("--dry-run", action="store_true", help="every step's setup only; works without a GPU")
    parser.add_argument("--skip", default="", help="comma-separated step names to leave out")
    parser.add_argument("--time-limit", type=float, default=450,
                        help=f"seconds for everything (at most {TOTAL_LIMIT}); budgets shrink to fit a lower one")
    parser.add_argument("--parse-only", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parse_only:
        return parse_only(args.parse_only[0], args.parse_only[1:])
    if not 60 <= args.time_limit <= TOTAL_LIMIT:
        parser.error(f"--time-limit must be between 60 and {TOTAL_LIMIT} seconds, got {args.time_limit:g}")

    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.dry_run:
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing to do. "
              "`make gpu-check DRY_RUN=1` checks the plan on this machine.")
        return 0
    if on_gpu:
        from harness import device_slug  # benchmarks/harness.py: the folder every benchmark writes to

        slug = device_slug("cuda")
    else:
        slug = "dry-run"
    arch = "%d.%d" % torch.cuda.get_device_capability() if on_gpu else "9.0"
    staging = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    results = staging / slug
    results.mkdir()
    steps = plan(results, arch)
    unknown = set(filter(None, args.skip.split(","))) - {s.name for s in steps}
    if unknown:
        parser.error(f"--skip: no step named {', '.join(sorted(unknown))}; steps: {', '.join(s.name for s in steps)}")
    print(f"gpu-check{' (dry run)' if args.dry_run else ''}: {len(steps)} steps within {args.time_limit:.0f} s; "
          f"device {torch.cuda.get_device_name(0) if on_gpu else 'none'}, sm_{arch.replace('.', '')}, "
          f"{os.cpu_count()} cores; torch {torch.__version__}", flush=True)

    records = run_plan(steps, results, args.dry_run, args.time_limit, set(filter(None, args.skip.split(","))))
    summary = {"device": torch.cuda.get_device_name(0) if on_gpu else None, "dry_run": args.dry_run,
               "torch": torch.__version__, "cuda": torch.version.cuda, "arch": arch,
               "time_limit_s": args.time_limit, "steps": records}
    (results / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(records, args.dry_run)
    failed = [r["step"] for r in records if r["returncode"] not in (0, "not run: no time left")]

    if args.out is not None:
        archive = args.out / "gpu-check.tar.gz"
        pack(results, archive)
        shutil.copy(results / "gpu_check.json", args.out / "gpu-check.json")
        where = f"{archive} ({archive.stat().st_size / 1024:.0f} KiB; unpack with tar -xzf {archive.name} -C benchmarks/results)"
    elif args.dry_run:
        archive = staging / "gpu-check.tar.gz"
        pack(results, archive)
        where = f"{archive} ({archive.stat().st_size / 1024:.0f} KiB)"
    else:
        target = ROOT / "benchmarks" / "results" / slug
        shutil.copytree(results, target, dirs_exist_ok=True)
        where = str(target)
    if args.out is not None or not args.dry_run:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"gpu-check: results in {where}; " + (f"FAILED: {', '.join(failed)}" if failed else "all steps passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
