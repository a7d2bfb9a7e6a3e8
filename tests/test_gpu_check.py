"""make gpu-check's runner: steps on time budgets, overruns stopped with their output kept,
benchmark arguments checked without running the benchmark, one archive out."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
_spec.loader.exec_module(gpu_check)


def python_step(name: str, budget: float, code: str) -> "gpu_check.Step":
    command = [sys.executable, "-c", code]
    return gpu_check.Step(name, budget, command, command)


def test_an_overrunning_step_is_stopped_with_its_children_and_keeps_its_output(tmp_path):
    # The step starts a child that outlives a plain kill of its parent; both must stop.
    code = ("import subprocess, sys, time; print('partial result', flush=True); "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('child-pid', child.pid, 'started', flush=True); time.sleep(60)")
    step = python_step("slow", 1, code)
    started = time.monotonic()
    returncode, took = gpu_check.run_step(step, step.command, tmp_path / "slow.log", seconds=8)
    assert returncode == "timeout" and took < 25 and time.monotonic() - started < 25
    log = (tmp_path / "slow.log").read_text()
    assert "partial result" in log and "stopped after 8 s" in log
    child = int(re.search(r"^child-pid (\d+) started$", log, re.M).group(1))
    time.sleep(0.5)
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True,
                           text=True).stdout.strip()
    assert state == "" or state.startswith("Z"), state  # gone, or a zombie awaiting init ("ZN" when niced)


def test_each_step_may_use_the_time_earlier_steps_left_but_not_what_later_ones_need(tmp_path):
    steps = [python_step("first", 5, "print('quick')"),
             python_step("second", 5, "import time; time.sleep(60)"),
             python_step("third", 5, "print('still runs')"),
             python_step("extra", 0, "print('optional')")]
    started = time.monotonic()
    # 15 s of budgets in a 15 s + reserve limit: "second" may run until 5 s before the end.
    records = gpu_check.run_plan(steps, tmp_path, dry_run=False, skip=set(), started=started,
                                 time_limit=15 + gpu_check.PACK_RESERVE)
    by_name = {r["step"]: r for r in records}
    assert by_name["first"]["returncode"] == 0
    assert by_name["second"]["returncode"] == "timeout"
    assert 5 <= by_name["second"]["seconds"] <= 10 + 5  # its own 5 s plus what "first" left (+ the stop)
    assert by_name["third"]["returncode"] == 0 and "still runs" in (tmp_path / "third.log").read_text()
    assert by_name["extra"]["returncode"] == "not run: no time left"


def test_dry_run_runs_the_dry_commands_and_skip_drops_steps(tmp_path):
    steps = [gpu_check.Step("a", 10, [sys.executable, "-c", "raise SystemExit(3)"],
                            [sys.executable, "-c", "print('setup only')"]),
             python_step("b", 10, "print('b')")]
    records = gpu_check.run_plan(steps, tmp_path, dry_run=True, time_limit=100, skip={"b"},
                                 started=time.monotonic())
    assert [(r["step"], r["returncode"]) for r in records] == [("a", 0)]
    assert "setup only" in (tmp_path / "a.log").read_text()


def run_parse_only(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--parse-only", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_parse_only_checks_a_scripts_arguments_without_running_it(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("import argparse, sys\n"
                      "parser = argparse.ArgumentParser()\n"
                      "parser.add_argument('--n', type=int, required=True)\n"
                      "args = parser.parse_args()\n"
                      "print('benchmark ran'); sys.exit(5)\n")
    accepted = run_parse_only(str(script), "--n", "3")
    assert accepted.returncode == 0 and "'n': 3" in accepted.stdout and "benchmark ran" not in accepted.stdout
    refused = run_parse_only(str(script), "--n", "three")
    assert refused.returncode == 2 and "invalid int value: 'three'" in refused.stderr


def test_the_plan_fits_one_command_and_names_the_d64_sweep():
    steps = gpu_check.plan(Path("/results"), "9.0")
    required = [s for s in steps if not s.optional]
    assert sum(s.budget for s in required) + gpu_check.PACK_RESERVE <= 450 <= gpu_check.TOTAL_LIMIT <= 480
    assert [s.name for s in required] == ["build", "info", "tests", "attention_causal", "attention_agents",
                                          "training", "hf_attention"]
    build = steps[0]
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and build.env["AGENTFAST_CUDA"] == "1"
    for step in steps[3:5]:
        args = " ".join(step.command)
        assert "--backends triton,cuda,flex,sdpa --d 64 --dtype bfloat16 --modes fwd,fwd+bwd" in args
    assert {s.command[s.command.index("--masks") + 1] for s in steps[3:5]} == {"causal", "agents"}
    turns = steps[len(required)]  # the first optional step: the same sweep over turn layouts
    assert turns.optional and turns.command[turns.command.index("--masks") + 1] == "turns"
    assert "--backends triton,cuda,flex,sdpa --d 64 --dtype bfloat16" in " ".join(turns.command)


@pytest.mark.slow
def test_dry_run_packs_one_archive(tmp_path):
    """The whole dry run on this machine, the GPU tests' collection and the benchmarks' imports
    included (about a minute on two cores)."""
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path),
                             "--skip", "info,attention_d64_long,triton_autotune,attention_d32_d128"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-check.json", "gpu-check.tar.gz"]
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [(s["step"], s["returncode"]) for s in summary["steps"]] == [
        (name, 0) for name in ("build", "tests", "attention_causal", "attention_agents", "training", "hf_attention",
                               "attention_turns")]
    with tarfile.open(tmp_path / "gpu-check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"dry-run/gpu_check.json", "dry-run/tests.log", "dry-run/build.log"} <= names
    for line in ("build", "tests", "attention_causal", "training", "hf_attention"):
        assert any(row.split()[:2] == [line, str(s["budget_s"])] for row in result.stdout.splitlines()
                   for s in summary["steps"] if s["step"] == line)
