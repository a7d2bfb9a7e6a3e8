"""Module attributes that load on first use, and old names that moved (PEP 562).

``lazy_exports`` lets a package name what it offers without importing it: ``import
agentfast.models`` stays cheap (no torch) until a name is used, which keeps the command line
quick to start. ``moved_names`` keeps an old import path working, with a DeprecationWarning
that names the new one.

Targets are written ``"package.module"`` (the attribute of the same name there) or
``"package.module:attribute"``; a relative ``".module"`` is resolved against the package.
The layering test reads these tables, so a lazy name still counts as an import.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Any, Callable, Mapping


def _resolve(package: str, target: str, name: str) -> Any:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name, package)
    return getattr(module, attribute or name)


def lazy_exports(package: str, exports: Mapping[str, str],
                 moved: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: names in ``exports`` load from their
    module on first use; names in ``moved`` too, with a DeprecationWarning; any other name
    that is a submodule of ``package`` is imported (as an eager ``__init__`` would have)."""
    moved = dict(moved or {})
    warn = moved_names(package, moved)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = _resolve(package, exports[name], name)
        elif name in moved:
            value = warn(name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if name not in moved:  # a moved name warns at every use
            importlib.import_module(package).__dict__[name] = value
        return value

    return __getattr__


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names of ``module`` that now live elsewhere."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target = moved[name]
        module_name, _, attribute = target.partition(":")
        new_path = f"{module_name}.{attribute or name}"
        warnings.warn(f"{module}.{name} moved to {new_path}; the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        return _resolve(module, target, name)

    return __getattr__
