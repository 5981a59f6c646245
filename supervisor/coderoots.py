"""What of the host a worker needs to import its code: the module's own files, nothing beside.

`spawn(Iface, "mymod:Impl")` works wherever the embedder can import `mymod` (a
script's directory, a src/ layout, site-packages). The sandbox gets the import
root of that one top-level name, read-only and at the same path: the package's
directory (every portion of a namespace package) or the single module file,
with its sys.path entry on PYTHONPATH. Its siblings (a checkout's .git, a
secrets file next to the script) stay outside.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from typing import NamedTuple

from warden.supervisor.interpreter import is_under


class CodeRoot(NamedTuple):
    binds: tuple[str, ...]         # to bind read-only at the same paths
    path_entries: tuple[str, ...]  # the sys.path entries they are imported from


def _top_level_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    top = module.split(":", 1)[0].split(".", 1)[0]
    try:
        return importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None


# Found roots, by top-level name and the sys.path they were found under: every
# zygote spawn asks, and a find_spec costs ~0.2 ms of a ~1.5 ms spawn. A name not
# found is looked for again next time (it may be created meanwhile).
_found: dict[tuple[str, tuple[str, ...]], CodeRoot] = {}


def code_root(module: str) -> CodeRoot | None:
    """The files `module`'s top-level name is imported from, or None when it is
    built in, frozen, or not importable here (the worker's own error will say so)."""
    key = (module.split(":", 1)[0].split(".", 1)[0], tuple(sys.path))
    root = _found.get(key)
    if root is None:
        root = _find_root(module)
        if root is not None:
            _found[key] = root
    return root


def _find_root(module: str) -> CodeRoot | None:
    spec = _top_level_spec(module)
    if spec is None:
        return None
    if spec.origin in (None, "namespace") and spec.submodule_search_locations:
        portions = tuple(os.path.realpath(p) for p in spec.submodule_search_locations)
        return CodeRoot(portions, tuple(os.path.dirname(p) for p in portions))
    if not spec.origin or spec.origin in ("built-in", "frozen") or not spec.has_location:
        return None
    origin = os.path.realpath(spec.origin)
    if spec.submodule_search_locations is not None:  # a package: its directory
        pkg = os.path.dirname(origin)
        return CodeRoot((pkg,), (os.path.dirname(pkg),))
    return CodeRoot((origin,), (os.path.dirname(origin),))  # a single module file


def code_roots(modules: Iterable[str], visible: Iterable[str] = ()) -> CodeRoot:
    """The union for several modules, leaving out what lies under `visible`
    (what the sandbox sees and imports from already: /usr, the interpreter's
    prefix and site-packages)."""
    seen = tuple(visible)
    binds: dict[str, None] = {}
    entries: dict[str, None] = {}
    for module in modules:
        root = code_root(module)
        if root is None:
            continue
        for b, e in zip(root.binds, root.path_entries, strict=True):
            if not is_under(b, seen):  # else the sandbox imports it from where it is already
                binds[b] = None
                entries[e] = None
    return CodeRoot(tuple(binds), tuple(entries))
