"""The benchmarks' shared helpers (benchmarks/harness.py): FLOP counting, device naming and
result files, against hand-computed values."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("harness", ROOT / "benchmarks" / "harness.py")
harness = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("harness", harness)
_spec.loader.exec_module(harness)


def test_attention_flops_by_hand():
    # B=2, H=3, Nq=4 queries each seeing 5 keys on average, D=8: two products of 2*Nq*Nk*D each.
    assert harness.attention_flops(2, 3, 4, 5, 8) == 2 * 3 * (2 * 4 * 5 * 8) * 2
    assert harness.attention_flops(2, 3, 4, 5, 8, backward=True) == pytest.approx(3.5 * 3840)


def test_cpu_slug_is_prefixed_and_filename_safe(monkeypatch):
    monkeypatch.setattr(harness, "cpu_model", lambda: "Intel(R) Xeon(R) Processor @ 2.10GHz, extra")
    assert harness.device_slug("cpu") == "cpu-intel-r-xeon-r-processor-2-10ghz"
    name, slug = harness.device_label("cpu")
    assert name.startswith("Intel(R) Xeon(R) Processor") and name.endswith("threads")
    assert slug == harness.device_slug("cpu")


def test_results_go_to_the_device_folder_unless_told(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(harness, "cpu_model", lambda: "Some CPU")
    folder = harness.results_dir("cpu")
    assert folder == tmp_path / "results" / "cpu-some-cpu" and folder.is_dir()
    assert harness.results_dir("cpu", tmp_path / "mine") == tmp_path / "mine"
    json_path, md_path = harness.write_results(folder, "x", {"rows": [1.5]}, "| a |\n\n")
    assert json.loads(json_path.read_text()) == {"rows": [1.5]}
    assert md_path.read_text() == "| a |\n"


def test_timed_counts_the_call():
    calls = []
    wall, cpu = harness.timed(lambda: calls.append(sum(range(10_000))), "cpu")
    assert calls == [sum(range(10_000))] and wall > 0 and cpu >= 0
