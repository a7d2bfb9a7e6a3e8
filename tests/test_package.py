"""Packaging promises: a cheap import, a readable info report, an extension that never
crashes an import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


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


def test_loaded_but_mismatched_extension_warns_and_is_used(tmp_path, monkeypatch):
    """An extension built against another torch that still links is used, with one warning
    naming both versions."""
    from agentfast import _extension

    info = tmp_path / "_build_info.json"
    info.write_text(json.dumps({"torch_version": "0.0.1", "torch_cuda_version": "9.9"}))
    monkeypatch.setattr(_extension, "_BUILD_INFO", info)
    sentinel = object()
    monkeypatch.setattr(_extension.importlib, "import_module", lambda name: sentinel)
    _extension.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"does not match this torch: built against torch 0\.0\.1"):
            assert _extension.load() is sentinel
        assert _extension.load_error() is None
    finally:
        _extension.load.cache_clear()


def test_sdist_carries_every_extension_source_and_records_no_build(tmp_path):
    """The source archive builds elsewhere only if every csrc file (headers too) is in it; and
    only a finished build records build metadata, not merely reading setup.py."""
    tree = tmp_path / "tree"
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "Makefile"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tree / name)
    ignore = shutil.ignore_patterns("*.so", "_build_info.json", "__pycache__")
    for name in ("csrc", "agentfast", "kernels"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    env = {**os.environ, "AGENTFAST_CUDA": "0"}
    result = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                            cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        packed = {Path(*Path(name).parts[1:]) for name in tar.getnames()}
    sources = {path.relative_to(ROOT) for path in (ROOT / "csrc").rglob("*") if path.is_file()}
    assert sources and sources <= packed, sorted(map(str, sources - packed))
    assert not (tree / "agentfast" / "_build_info.json").exists()


def test_help_and_parsers_load_no_torch():
    """``agentfast --help`` and every ``agentfast COMMAND --help`` build their parsers from
    modules that import no torch (or anything heavier): the CLI starts in a fraction of a
    second and loads what a command needs when it runs."""
    code = (
        "import contextlib, io, sys\n"
        "from agentfast.cli import main\n"
        "for argv in ([], ['convert'], ['embed'], ['train'], ['evaluate'], ['inspect'], ['predict'], ['bench'], ['info']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main([*argv, '--help'])\n"
        "        except SystemExit as exit_:\n"
        "            assert exit_.code == 0, argv\n"
        "    assert 'usage: agentfast' in out.getvalue(), argv\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'triton', 'transformers', 'safetensors') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    assert run_python(code).strip().splitlines()[-1] == "[]"


def test_the_package_facade_is_the_attention_function():
    import importlib
    import inspect

    import agentfast

    api = importlib.import_module("agentfast.attention.api")
    assert inspect.signature(agentfast.attention) == inspect.signature(api.attention)
    case_q = __import__("torch").randn(1, 2, 5, 8)
    assert agentfast.attention(case_q, case_q, case_q, backend="reference").equal(
        api.attention(case_q, case_q, case_q, backend="reference"))
