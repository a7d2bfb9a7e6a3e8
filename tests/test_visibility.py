"""Agent visibility in every form (presets, maps, matrices, bitmasks, settings), checked
against matrices written out by hand."""

from __future__ import annotations

import pytest
import torch

from agentfast.visibility import (
    MAX_AGENTS,
    as_visibility,
    bitmask_to_visibility,
    parse_visibility_argument,
    setting_visibility,
    visibility_from_map,
    visibility_preset,
    visibility_to_bitmask,
)

T, F = True, False


def test_presets():
    assert visibility_preset("full", 2).tolist() == [[T, T], [T, T]]
    assert visibility_preset("private", 3).tolist() == [[T, F, F], [F, T, F], [F, F, T]]
    assert visibility_preset("hub", 3, hub=1).tolist() == [[T, T, F], [T, T, T], [F, T, T]]
    assert visibility_preset([[1, 0], [1, 1]], 2).tolist() == [[T, F], [T, T]]
    with pytest.raises(ValueError, match="unknown visibility preset 'ring'"):
        visibility_preset("ring", 2)
    with pytest.raises(ValueError, match=f"num_agents must lie in \\[1, {MAX_AGENTS}\\]"):
        visibility_preset("full", MAX_AGENTS + 1)
    with pytest.raises(ValueError, match="only 0 and 1"):
        visibility_preset([[2, 0], [0, 1]], 2)


def test_a_map_names_who_sees_whom():
    names = ["planner", "coder", "tester"]
    mapping = {"planner": ["planner"], "coder": ["planner"]}  # the tester is not listed
    assert visibility_from_map(mapping, names, 3).tolist() == [[T, F, F], [T, T, F], [T, T, T]]
    # Logs: what cannot be placed is passed over. Arguments: it is refused by name.
    assert visibility_from_map({"nobody": ["coder"], "coder": "planner"}, names, 3).all()
    assert visibility_from_map(None, names, 3).all()
    with pytest.raises(ValueError, match="unknown agent 'nobody' in agent_mask"):
        visibility_from_map({"nobody": []}, names, 3, strict=True)
    with pytest.raises(ValueError, match=r"agent_mask\['coder'\] must be a list of agents"):
        visibility_from_map({"coder": "planner"}, names, 3, strict=True)


def test_any_form_becomes_a_checked_matrix():
    hub = visibility_preset("hub", 3)
    assert torch.equal(as_visibility("hub", 3), hub)
    assert torch.equal(as_visibility(hub.int(), 3), hub)
    assert torch.equal(as_visibility({"1": ["1"]}, 3), torch.tensor([[T, T, T], [F, T, F], [T, T, T]]))
    batched = torch.stack([hub, ~hub | torch.eye(3, dtype=torch.bool)])
    assert torch.equal(as_visibility(batched, 3, batch=2), batched)
    assert as_visibility(None, 3) is None
    with pytest.raises(TypeError, match="agent_mask must be bool"):
        as_visibility(hub.float(), 3)
    with pytest.raises(ValueError, match=r"\[A, A\] or \[B=3, A, A\]"):
        as_visibility(batched, 3, batch=3)
    with pytest.raises(ValueError, match="at most 64 agents"):
        as_visibility(torch.ones(65, 65, dtype=torch.bool), 3)


def test_settings_and_command_line_arguments():
    assert setting_visibility("data", 3) is None and setting_visibility("full", 3) is None
    assert torch.equal(setting_visibility("private", 2), torch.eye(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="visibility must be one of"):
        setting_visibility("everyone", 2)
    assert parse_visibility_argument("hub") == "hub"
    assert parse_visibility_argument('{"coder": ["planner"]}') == {"coder": ["planner"]}
    with pytest.raises(ValueError, match="--visibility must be full, private, hub or JSON"):
        parse_visibility_argument("{oops")
    with pytest.raises(ValueError, match="must be an object"):
        parse_visibility_argument("[1, 2]")


def test_bitmasks_round_trip_and_put_agent_63_in_the_sign_bit():
    generator = torch.Generator().manual_seed(0)
    visibility = torch.rand(2, MAX_AGENTS, MAX_AGENTS, generator=generator) > 0.5
    bits = visibility_to_bitmask(visibility)
    assert bits.dtype == torch.int64 and bits.shape == (2, MAX_AGENTS)
    assert torch.equal(bitmask_to_visibility(bits, MAX_AGENTS), visibility)
    expected = sum(1 << c for c in range(MAX_AGENTS) if visibility[0, 5, c])
    assert int(bits[0, 5]) == (expected - (1 << 64) if expected >= 1 << 63 else expected)



def test_importing_the_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, agentfast.visibility as v; print(v.SETTINGS, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "('data', 'full', 'private', 'hub') False", result.stderr
