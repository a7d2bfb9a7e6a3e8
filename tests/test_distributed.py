"""`torchrun --nproc_per_node=2 -m agentfast train ...`: DistributedDataParallel with gloo
on CPU, sharded data, and a single writer of checkpoints and logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training_fixtures import make_episode_dicts, save_tiny_encoder, write_jsonl

REPO = Path(__file__).resolve().parent.parent


def test_two_process_ddp_training_through_the_cli(tmp_path):
    data = write_jsonl(tmp_path / "episodes.jsonl", make_episode_dicts(4))
    encoder = save_tiny_encoder(tmp_path / "encoder", hidden_size=32)
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "agentfast", "train", str(data), "--output", str(output), "--device", "cpu",
        "--encoder", str(encoder), "--cache-dir", str(tmp_path / "cache"),
        "--held-out-task-types", "performance", "--max-steps", "6", "--eval-every", "3",
        "--embed-dim", "16", "--num-layers", "1", "--num-heads", "2", "--hidden-dim", "32",
        "--max-seq-len", "4", "--batch-size", "2", "--log-every", "1", "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = json.loads((output / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["training"]["steps"] == 6
    events = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in events if e["event"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # one writer: each step logged once
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [3, 6]
    assert done.stdout.count("majority baseline") == 1  # only rank 0 reports
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == \
        ["latest", "step-00000003", "step-00000006"]


class _FakeRank:
    """A non-zero rank of a two-process run: rank 0's answers come from ``rank0``."""

    rank, world_size, is_main, enabled = 1, 2, False, True

    def __init__(self, rank0):
        self.rank0 = rank0
        self.barriers = 0

    def broadcast_object(self, value):
        assert value is None  # only rank 0 looks
        return self.rank0

    def barrier(self):
        self.barriers += 1


def test_only_rank_0_decides_about_an_old_run_and_every_rank_meets_at_the_barrier(tmp_path):
    from agentfast.training.run import _check_fresh_output, _delete_old_run

    # Rank 0 saw an old run that it has already deleted by the time this rank looks.
    rank = _FakeRank(["config.json", "checkpoints/"])
    existing = _check_fresh_output(tmp_path, True, rank)
    assert existing == ["config.json", "checkpoints/"]
    (tmp_path / "config.json").write_text("{}")  # a rank other than 0 never deletes
    _delete_old_run(tmp_path, rank)
    assert rank.barriers == 1 and (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match="already holds a run"):
        _check_fresh_output(tmp_path / "empty", False, _FakeRank(["model.safetensors"]))
