"""The import graph of the agentfast package, read from its source with ``ast``.

Every module of ``agentfast/`` (and ``kernels/``, installed as ``agentfast.kernels``) is a
node; an edge ``a -> b`` says module ``a`` imports agentfast module ``b``. An edge is
*lazy* when the import runs later than the module's own import: inside a function, under
``if TYPE_CHECKING``, or named in a table of ``agentfast._lazy`` (``lazy_exports`` /
``moved_names``) or as a ``"agentfast.module[:attribute]"`` string, which code imports when
it needs it. Lazy edges count like any other for the layering rules.

``python -m tests.import_graph`` prints the layers, the edges between packages and the
lines of code per layer.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"agentfast": ROOT / "agentfast", "agentfast.kernels": ROOT / "kernels"}
COMPILED = {"agentfast._C"}  # built from csrc/; no Python source to read

# Lowest first; each layer names the layers below it that it may import (and it may
# import itself). Data needs no attention and no models; the pipeline uses trained policies
# (models), the data layer's encoders and the decoders, never the trainer. The package root
# (``agentfast/__init__.py``) is the public face of them all.
LAYERS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("base", ("agentfast._version", "agentfast._lazy", "agentfast.visibility",
              "agentfast.atomic_files", "agentfast.errors", "agentfast.interruption",
              "agentfast.progress", "agentfast._threads"), ()),
    ("attention", ("agentfast.attention", "agentfast.kernels", "agentfast._extension",
                   "agentfast._C"), ("base",)),
    ("nn", ("agentfast.nn",), ("base", "attention")),
    ("models", ("agentfast.models",), ("base", "attention", "nn")),
    ("data", ("agentfast.data",), ("base",)),
    ("training", ("agentfast.training",), ("base", "attention", "nn", "models", "data")),
    ("integrations", ("agentfast.integrations",), ("base", "attention", "nn", "models", "data")),
    ("decoders", ("agentfast.decoders",), ("base", "attention", "nn", "models", "data")),
    ("pipeline", ("agentfast.pipeline",), ("base", "attention", "nn", "models", "data", "decoders")),
    # Pictures of policies and runs: they read saved policies and logs, never the trainer.
    ("visualize", ("agentfast.visualize",), ("base", "attention", "nn", "models", "data")),
    ("cli", ("agentfast.cli", "agentfast.info", "agentfast.__main__", "agentfast"),
     ("base", "attention", "nn", "models", "data", "integrations", "training", "decoders", "pipeline",
      "visualize")),
]
LAYER_NAMES = [name for name, _, _ in LAYERS]
_MODULE_STRING = re.compile(r"agentfast(\.\w+)+(:\w+)?")
_RELATIVE_STRING = re.compile(r"\.\w+(\.\w+)*(:\w+)?")
_LAZY_TABLE_FUNCTIONS = {"lazy_exports", "moved_names"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    lazy: bool
    line: int


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    modules = {}
    for package, directory in SOURCES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "agentfast" and name.startswith("agentfast.kernels"):
                continue
            modules[name] = path
    return modules


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest prefix that names ``module``."""
    best, best_length = -1, -1
    for index, (_, prefixes, _) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def may_import(source: str, target: str) -> bool:
    """Whether the layering allows module ``source`` to import module ``target``."""
    source_layer, target_layer = LAYERS[layer_of(source)], LAYERS[layer_of(target)]
    return target_layer[0] == source_layer[0] or target_layer[0] in source_layer[2]


def edges(modules: dict[str, Path] | None = None) -> list[Edge]:
    modules = modules or module_files()
    found = []
    for name, path in modules.items():
        reader = _ImportReader(name, path.name == "__init__.py", set(modules) | COMPILED)
        reader.visit(ast.parse(path.read_text(encoding="utf-8")))
        found.extend(reader.edges)
    return found


def cycles(graph_edges: list[Edge]) -> list[list[str]]:
    """Every strongly connected group of more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {}
    for edge in graph_edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


class _ImportReader(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.edges: list[Edge] = []
        self.depth = 0  # > 0 inside a function or an `if TYPE_CHECKING` block
        self.tables: dict[str, ast.Dict] = {}

    # -- where an import runs

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self._nested(node)
        else:
            self.generic_visit(node)

    # -- imports

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno, self.depth > 0)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.module or "", node.level)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.known else base, node.lineno, self.depth > 0)

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.tables[target.id] = node.value
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if function in _LAZY_TABLE_FUNCTIONS:
            for argument in [*node.args, *(k.value for k in node.keywords)]:
                table = self.tables.get(argument.id) if isinstance(argument, ast.Name) else argument
                if isinstance(table, ast.Dict):
                    for value in table.values:
                        if isinstance(value, ast.Constant) and isinstance(value.value, str):
                            self._add_string(value.value, value.lineno, relative=True)
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if not isinstance(node.value, ast.Constant):  # docstrings name modules without importing them
            self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _MODULE_STRING.fullmatch(node.value):
            self._add_string(node.value, node.lineno, relative=False)

    # -- resolution

    def _absolute(self, module: str, level: int) -> str:
        if level == 0:
            return module
        base = self.package.split(".")
        base = base[: len(base) - (level - 1)]
        return ".".join([*base, module] if module else base)

    def _add_string(self, text: str, line: int, relative: bool) -> None:
        name = text.partition(":")[0]
        if relative and _RELATIVE_STRING.fullmatch(text):
            name = self._absolute(name.lstrip("."), len(name) - len(name.lstrip(".")))
        while name and name not in self.known:  # "agentfast.models.save_pretrained": the module
            name = name.rpartition(".")[0]
        if name:
            self._add(name, line, lazy=True)

    def _add(self, target: str, line: int, lazy: bool) -> None:
        if target == "agentfast" or target.startswith("agentfast."):
            while target not in self.known and "." in target:
                target = target.rpartition(".")[0]
            if target != self.module:
                self.edges.append(Edge(self.module, target, lazy, line))


def lines_of_code(path: Path) -> int:
    """Lines that are not blank and not comments."""
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.strip().startswith("#"))


def report() -> str:
    """Modules and lines per layer, module-to-module edges between layers, refusals, cycles."""
    modules = module_files()
    graph_edges = edges(modules)
    pairs = {(e.source, e.target) for e in graph_edges}
    eager = {(e.source, e.target) for e in graph_edges if not e.lazy}
    out = [f"{len(modules)} modules, {len(pairs)} module-to-module edges "
           f"({len(eager)} imported at module level, {len(pairs - eager)} only when used)"]
    for index, name in enumerate(LAYER_NAMES):
        members = [m for m in modules if layer_of(m) == index]
        out.append(f"  {name:<12} {len(members):3d} modules {sum(lines_of_code(modules[m]) for m in members):6d} lines")
    between: dict[tuple[str, str], int] = {}
    for source, target in pairs:
        key = (LAYER_NAMES[layer_of(source)], LAYER_NAMES[layer_of(target)])
        if key[0] != key[1]:
            between[key] = between.get(key, 0) + 1
    out.append("edges between layers:")
    out.extend(f"  {a} -> {b}: {n}" for (a, b), n in sorted(between.items()))
    refused = sorted({f"{e.source} -> {e.target}" for e in graph_edges if not may_import(e.source, e.target)})
    out.append(f"imports the layering refuses: {refused or 'none'}")
    out.append(f"cycles: {cycles(graph_edges) or 'none'}")
    return "\n".join(out)


if __name__ == "__main__":
    print(report())
