"""Embedding threads: `agentfast embed --threads` (default: half the CPUs) holds torch's CPU
threads while texts are embedded and leaves the process's setting as it found it."""

import pytest
import torch

from agentfast import _threads
from agentfast.cli import build_parser, main
from tests.fake_encoders import tiny_encoder
from tests.training_fixtures import make_episode_dicts, save_tiny_encoder, write_jsonl


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_default_is_half_the_usable_cpus(monkeypatch, cpus, expected):
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert _threads.default_threads() == expected


def threads_seen_by_model(encoder) -> list[int]:
    seen = []
    encoder._ensure_loaded().model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    return seen


def test_encoder_embeds_with_its_threads_and_restores_torchs():
    before = torch.get_num_threads()
    encoder = tiny_encoder()
    encoder.threads = before + 1  # differs from the current setting whatever the machine
    seen = threads_seen_by_model(encoder)
    encoder.encode(["a b", "c d e"], progress=False)
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before
    encoder.threads = None
    encoder.encode(["f"], progress=False)
    assert seen[-1] == before


def test_embed_command_passes_threads_to_the_encoder(tmp_path, monkeypatch, capsys):
    from agentfast.data import preparation

    assert build_parser().parse_args(["embed", "x"]).encoder_threads == _threads.default_threads()
    asked = []
    real_build_encoder = preparation.build_encoder
    monkeypatch.setattr(preparation, "build_encoder",
                        lambda settings, **kw: asked.append(kw["threads"]) or real_build_encoder(settings, **kw))
    data = write_jsonl(tmp_path / "episodes.jsonl", make_episode_dicts(1))
    encoder = save_tiny_encoder(tmp_path / "encoder")
    before = torch.get_num_threads()
    assert main(["embed", str(data), "--encoder", str(encoder), "--cache-dir", str(tmp_path / "cache"),
                 "--threads", "3", "--no-progress"]) == 0
    assert asked == [3] and torch.get_num_threads() == before
    assert "computed" in capsys.readouterr().out
