"""The multi-agent layouts the attention benchmarks share (agents speaking in turns, and the
share of tiles a mask leaves), and the benchmark's turns sweep on a tiny CPU problem."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from agentfast.attention.benchmark import TileOccupancy, agent_turns, tile_occupancy
from agentfast.visibility import visibility_preset

ROOT = Path(__file__).resolve().parent.parent


def _runs(ids: torch.Tensor) -> list[tuple[int, int]]:
    """(agent, run length) of each maximal run of one agent."""
    values, counts = torch.unique_consecutive(ids, return_counts=True)
    return list(zip(values.tolist(), counts.tolist()))


@pytest.mark.parametrize("agents", [2, 4, 8])
def test_agents_speak_in_turns_of_varied_length(agents):
    ids = agent_turns(3, 3000, agents, 64, seed=5)
    assert ids.shape == (3, 3000) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < agents
    for row in ids:
        runs = _runs(row)
        assert runs[0][0] == 0  # agent 0 opens
        # Each run is one turn (the next speaker is never the one who just spoke), of
        # 16..256 tokens; only the last may be cut short by the sequence's end.
        assert all(16 <= length <= 256 for _, length in runs[:-1])
        assert len({length for _, length in runs}) > 3  # varied, not a fixed turn
        assert len({agent for agent, _ in runs}) == agents
    assert not torch.equal(ids[0], ids[1])  # every sequence its own turns
    assert torch.equal(ids, agent_turns(3, 3000, agents, 64, seed=5))
    if agents == 2:
        assert [agent for agent, _ in _runs(ids[0])][:4] == [0, 1, 0, 1]


def test_agent_turns_refuses_bad_sizes():
    with pytest.raises(ValueError, match="num_agents"):
        agent_turns(1, 10, 0, 4)
    with pytest.raises(ValueError, match="mean_turn"):
        agent_turns(1, 10, 2, 0)


def _two_turns(length: int, first: int) -> torch.Tensor:
    ids = torch.ones(1, length, dtype=torch.long)
    ids[0, :first] = 0
    return ids


def test_tile_occupancy_counts_tiles_by_hand():
    # Two tiles each way: agent 0 speaks keys 0..127, agent 1 the rest. Causal-only visits 3
    # tiles, two of them on the diagonal (partial).
    ids = _two_turns(256, 128)
    # private: agent 1's queries see nothing of agent 0's tile -> skipped.
    assert tile_occupancy(ids, visibility_preset("private", 2)) == TileOccupancy(2 / 3, 2 / 3)
    # hub (agent 0): agent 1 sees all of agent 0's tile -> visited and full.
    assert tile_occupancy(ids, visibility_preset("hub", 2)) == TileOccupancy(1.0, 2 / 3)
    # The turn change inside a tile makes the lower tile partial under "private" and leaves none
    # skipped; a length that is not a multiple of the tile judges edge tiles on real pairs only.
    occupancy = tile_occupancy(_two_turns(200, 150), visibility_preset("private", 2))
    assert occupancy == TileOccupancy(1.0, 1.0) and occupancy.skipped == 0.0
    assert tile_occupancy(_two_turns(200, 150), visibility_preset("full", 2)) == TileOccupancy(1.0, 2 / 3)


def test_tile_occupancy_matches_a_direct_count_on_turns():
    ids = agent_turns(2, 700, 4, 40, seed=1)
    visibility = visibility_preset("hub", 4)
    occupancy = tile_occupancy(ids, visibility, tile=64)
    visited = partial = 0
    blocks = -(-700 // 64)
    positions = torch.arange(700)
    for b in range(2):
        # the rule written out: j <= i and i's agent sees j's agent
        allowed = (positions[None, :] <= positions[:, None]) & visibility[ids[b][:, None], ids[b][None, :]]
        for qb in range(blocks):
            for kb in range(qb + 1):
                tile = allowed[qb * 64:qb * 64 + 64, kb * 64:kb * 64 + 64]
                visited += bool(tile.any())
                partial += bool(tile.any()) and not bool(tile.all())
    causal_tiles = 2 * blocks * (blocks + 1) // 2
    assert occupancy.visited == pytest.approx(visited / causal_tiles)
    assert occupancy.partial == pytest.approx(partial / causal_tiles)
    assert 0.0 < occupancy.skipped < 1.0


def test_bench_attention_turns_sweep_against_causal(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "benchmarks" / "bench_attention.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_attention"] = bench
    spec.loader.exec_module(bench)
    assert bench.main(["--device", "cpu", "--backends", "cpp", "--masks", "turns", "--turns-n", "256",
                       "--agents", "2,4", "--presets", "private,full", "--modes", "fwd", "--batch", "1",
                       "--heads", "1", "--repeats", "1", "--budget", "0", "--out", str(tmp_path),
                       "--name", "layouts"]) == 0
    rows = json.loads((tmp_path / "layouts.json").read_text())["rows"]
    causal = [r for r in rows if r["mask"] == "causal"]
    layouts = [r for r in rows if r["mask"] == "turns"]
    assert len(causal) == 1 and causal[0]["n"] == 256 and causal[0]["tiles_skipped"] == 0.0
    assert [(r["agents"], r["preset"]) for r in layouts] == [(2, "private"), (2, "full"), (4, "private"), (4, "full")]
    for row in layouts:
        assert row["vs_causal"] == pytest.approx(row["ms"] / causal[0]["ms"])
        assert row["cpu_vs_causal"] == pytest.approx(row["cpu_ms"] / causal[0]["cpu_ms"])
        expected = tile_occupancy(agent_turns(1, 256, row["agents"], 128), visibility_preset(row["preset"], row["agents"]))
        assert (row["tiles_skipped"], row["tiles_partial"]) == pytest.approx((expected.skipped, expected.partial))
    report = (tmp_path / "layouts.md").read_text()
    assert "## Multi-agent turn layouts against causal-only" in report
    assert "| 4 | private |" in report and "| causal only | - | 0% |" in report
