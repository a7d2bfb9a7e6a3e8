"""Packaging promises: a cheap import, a readable info report, an extension that never
crashes an import."""

from __future__ import annotations

import json
import subprocess
import sys


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_is_cheap_and_side_effect_free():
    out = run_python(
        "import json, sys, torch, agentfast, agentfast.models, agentfast.nn, agentfast.data\n"
        "print(json.dumps({'triton': 'triton' in sys.modules,"
        " 'transformers': 'transformers' in sys.modules,"
        " 'extension': 'agentfast._C' in sys.modules,"
        " 'cuda_initialised': torch.cuda.is_initialized()}))"
    )
    assert json.loads(out.strip().splitlines()[-1]) == {
        "triton": False, "transformers": False, "extension": False, "cuda_initialised": False,
    }


def test_lazy_public_names_resolve():
    import agentfast

    assert agentfast.ActionTransformer.__name__ == "ActionTransformer"
    assert agentfast.MultiAgentTransformer.__name__ == "MultiAgentTransformer"
    assert agentfast.HierarchicalTransformer.__name__ == "HierarchicalTransformer"
    assert callable(agentfast.attention)


def test_info_reports_every_backend():
    out = run_python("import agentfast.info as i; i.main([])")
    assert "torch " in out
    for name in ("reference", "sdpa", "flex", "triton", "cuda", "cpp"):
        assert any(line.startswith(f"{name} ") for line in out.splitlines()), name
    assert any(line.startswith("reference  cpu    yes") for line in out.splitlines())
    assert "flex       cpu    no: runs on cuda, not cpu" in out


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "agentfast.info"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "backend" in result.stdout


def test_missing_extension_warns_with_versions_instead_of_crashing(tmp_path, monkeypatch):
    from agentfast import _extension

    info = tmp_path / "_build_info.json"
    info.write_text(json.dumps({"torch_version": "0.0.1", "torch_cuda_version": "9.9"}))
    monkeypatch.setattr(_extension, "_BUILD_INFO", info)
    monkeypatch.setattr(_extension.importlib, "import_module",
                        lambda name: (_ for _ in ()).throw(ImportError("undefined symbol: _ZN3c10")))
    _extension.load.cache_clear()
    try:
        import pytest

        with pytest.warns(RuntimeWarning, match=r"built against torch 0\.0\.1 \(CUDA 9\.9\), running torch"):
            assert _extension.load() is None
        assert "rebuild" in _extension.load_error()
    finally:
        _extension.load.cache_clear()
