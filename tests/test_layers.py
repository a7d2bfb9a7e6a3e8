"""The package's layers depend downward only (see ``tests/import_graph.py`` for the layers
and what each may import), and no module imports another that imports it back, even
through an import deferred into a function: deferring an import may speed up start-up,
never hide a cycle."""

from __future__ import annotations

import textwrap

from tests import import_graph
from tests.import_graph import LAYERS, cycles, edges, layer_of, may_import, module_files


def test_every_module_has_a_layer():
    assert [m for m in module_files() if layer_of(m) < 0] == []


def test_imports_point_down():
    refused = sorted({f"{e.source} -> {e.target} (line {e.line}{', deferred' if e.lazy else ''})"
                      for e in edges() if not may_import(e.source, e.target)})
    assert refused == []


def test_no_import_cycles():
    assert cycles(edges()) == []


def test_the_layers_allow_only_lower_layers():
    names = [name for name, _, _ in LAYERS]
    for index, (name, _, allowed) in enumerate(LAYERS):
        assert set(allowed) <= set(names[:index]), name


def test_the_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The graph is only as good as its reader: deferred imports, TYPE_CHECKING blocks,
    lazy tables and module strings all count; docstrings do not."""
    package = tmp_path / "agentfast"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "visibility.py").write_text("")
    (package / "models" / "__init__.py").write_text(textwrap.dedent('''
        """Mentions agentfast.training.trainer in prose only."""
        from .._lazy import lazy_exports
        __getattr__ = lazy_exports(__name__, {"Thing": ".thing"})
    '''))
    (package / "models" / "thing.py").write_text(textwrap.dedent('''
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from ..data import reader
        def load():
            from agentfast.training import trainer
        REGISTERED = "agentfast.pipeline.replay:replay_episode"
    '''))
    for name in ("_lazy", "data/__init__", "data/reader", "training/__init__", "training/trainer",
                 "pipeline/__init__", "pipeline/replay"):
        (package / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (package / f"{name}.py").touch()
    monkeypatch.setattr(import_graph, "SOURCES", {"agentfast": package})
    found = {(e.source, e.target, e.lazy) for e in edges()}
    assert ("agentfast.models", "agentfast.models.thing", True) in found
    assert ("agentfast.models", "agentfast._lazy", False) in found
    assert {("agentfast.models.thing", target, True) for target in (
        "agentfast.data.reader", "agentfast.training.trainer", "agentfast.pipeline.replay")} <= found
    assert not any(target.startswith("agentfast.training") for source, target, _ in found
                   if source == "agentfast.models")
    refused = {(e.source, e.target) for e in edges() if not may_import(e.source, e.target)}
    assert ("agentfast.models.thing", "agentfast.training.trainer") in refused
    assert ("agentfast.models.thing", "agentfast.data.reader") in refused


def test_cycles_are_found():
    chain = [import_graph.Edge(a, b, lazy, 1) for a, b, lazy in
             [("m.a", "m.b", False), ("m.b", "m.c", True), ("m.c", "m.a", False), ("m.c", "m.d", False)]]
    assert cycles(chain) == [["m.a", "m.b", "m.c"]]
    assert cycles(chain[:2]) == []
