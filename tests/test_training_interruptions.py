"""A training run killed with SIGKILL at exact places (mid-step, mid-checkpoint write) and
resumed ends with the weights of a run never interrupted, bit for bit on CPU, and a log that
holds each step once.

Each run is an `agentfast train` process of its own on a tiny model, forked from a server
that has imported torch and agentfast once (``multiprocessing``'s forkserver), so a run costs
its training, not the imports. The kill points are reached deterministically:
``AGENTFAST_PAUSE_AT`` holds the process at a named point (``agentfast.interruption``)
until the test kills it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from agentfast.atomic_files import TEMP_SUFFIX
from tests.training_fixtures import make_episode_dicts, save_tiny_encoder, write_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 8, 2  # a checkpoint at every evaluation: steps 2, 4, 6, 8
TINY = ["--embed-dim", "16", "--num-layers", "1", "--num-heads", "2", "--hidden-dim", "32",
        "--max-seq-len", "4", "--batch-size", "4", "--warmup-steps", "2", "--max-steps", str(STEPS),
        "--eval-every", str(EVERY), "--log-every", "1", "--deterministic", "--threads", "1",
        "--no-eval", "--no-progress"]
POINTS = ["step-6-backward", "checkpoint-6-weights", "checkpoint-6-renamed"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted")
    return {"data": write_jsonl(root / "episodes.jsonl", make_episode_dicts(4)),
            "encoder": save_tiny_encoder(root / "encoder", hidden_size=32),
            "cache": root / "cache", "root": root}


def _run_cli(argv: list[str], env: dict, log: str) -> None:
    """The body of one forked run: its environment, its output to ``log``, the CLI."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from agentfast.cli import main

    sys.exit(main(argv))


_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["torch", "torch._dynamo", "agentfast.cli", "agentfast.training.run",
                                "agentfast.data", "safetensors.torch"])


def _train(ws, output: Path, *extra: str, env: dict | None = None):
    argv = ["train", str(ws["data"]), "--output", str(output), "--encoder", str(ws["encoder"]),
            "--cache-dir", str(ws["cache"]), *TINY, *extra]
    process = _SERVER.Process(target=_run_cli, args=(argv, env or {}, str(_log(output))))
    process.start()
    return process


def _log(output: Path) -> Path:
    return output.parent / f"{output.name}.out"


def _finish(process, output: Path) -> None:
    process.join(timeout=600)
    assert process.exitcode == 0, _log(output).read_text()


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    output = workspace["root"] / "uninterrupted"
    _finish(_train(workspace, output), output)
    return output


def _weights(path: Path) -> dict:
    return load_file(str(path))


def _assert_same_bits(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype
        assert left[name].view(-1).view(dtype=_raw(left[name])).tolist() == \
            right[name].view(-1).view(dtype=_raw(right[name])).tolist(), name


def _raw(tensor):
    import torch

    return {4: torch.int32, 2: torch.int16, 8: torch.int64, 1: torch.uint8}[tensor.element_size()]


def _kill_at(ws, output: Path, point: str) -> None:
    marker = output.parent / f"{output.name}.paused"
    process = _train(ws, output, env={"AGENTFAST_PAUSE_AT": point, "AGENTFAST_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert process.is_alive(), f"ended before {point}: " + _log(output).read_text()
        assert time.monotonic() < deadline, f"{point} was not reached"
        time.sleep(0.02)
    process.kill()  # SIGKILL: nothing of the run executes after this
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL and marker.read_text().strip() == point


@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_and_resumed_ends_with_the_uninterrupted_weights(workspace, uninterrupted, point):
    output = workspace["root"] / point
    _kill_at(workspace, output, point)
    assert not (output / "model.safetensors").exists()  # killed before the end
    _finish(_train(workspace, output, "--resume"), output)

    final = f"checkpoints/step-{STEPS:08d}/model.safetensors"
    _assert_same_bits(output / final, uninterrupted / final)  # the last weights
    _assert_same_bits(output / "model.safetensors", uninterrupted / "model.safetensors")  # the saved policy

    events = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, STEPS + 1))
    assert [e["step"] for e in events if e["event"] == "eval"] == list(range(EVERY, STEPS + 1, EVERY))
    assert [e["step"] for e in events if e["event"] == "resume"] == [4]
    leftovers = [p for p in output.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(TEMP_SUFFIX)]
    assert leftovers == []
