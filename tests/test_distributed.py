"""`torchrun --nproc_per_node=2 -m agentfast train ...`: DistributedDataParallel with gloo
on CPU, sharded data, and a single writer of checkpoints and logs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training_fixtures import TINY_MODEL, make_episode_dicts, save_tiny_encoder, tiny_datasets, write_jsonl

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


def _record_losses_worker(rank, world_size, init_method, output):
    """One rank of a gloo run of the Trainer; writes the losses of its own steps."""
    import torch.distributed as dist

    from agentfast.training import TrainConfig, Trainer, build_model
    from agentfast.training.distributed import DistributedContext

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        train, _ = tiny_datasets()
        config = TrainConfig(model=dict(TINY_MODEL, dropout=0.0), max_steps=3, batch_size=2,
                             log_every=1, warmup_steps=1)
        torch.manual_seed(0)
        model = build_model(config, state_dim=train.state_dim, action_dim=train.action_dim)
        trainer = Trainer(model, config, train, context=DistributedContext(rank, world_size, rank, "gloo"),
                          log_path=Path(output) / "log.jsonl", progress=False)
        losses, step = [], trainer.train_step

        def recording(batch):
            metrics = step(batch)
            losses.append(metrics["loss"])
            return metrics

        trainer.train_step = recording
        trainer.train()
        (Path(output) / f"rank{rank}.json").write_text(json.dumps(losses))
        dist.barrier()  # a rank that tears down while its peer still talks may abort in gloo
    finally:
        dist.destroy_process_group()


def test_the_logged_train_loss_is_the_mean_over_ranks(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_record_losses_worker,
                                args=(2, f"tcp://127.0.0.1:{port}", str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] != ranks[1]  # the shards differ, so the mean is not either rank's loss
    logged = [e["loss"] for e in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    assert logged == pytest.approx([(a + b) / 2 for a, b in zip(*ranks)], abs=1e-6)


def test_standard_input_is_refused_under_several_processes(tmp_path):
    """Only one process of a torchrun job gets the pipe: each rank would read part of it."""
    from agentfast.data.settings import DataSettings, EncoderSettings
    from agentfast.training.config import TrainConfig
    from agentfast.training.distributed import DistributedContext
    from agentfast.training.run import train_policy

    for rank in (0, 1):
        with pytest.raises(ValueError, match=r"standard input \('-'\) reaches one process only"):
            train_policy(TrainConfig(), DataSettings(path="-"), EncoderSettings(), tmp_path / "run",
                         context=DistributedContext(rank=rank, world_size=2))
    assert not (tmp_path / "run").exists()
