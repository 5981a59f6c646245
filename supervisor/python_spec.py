"""Sandbox specs that run a fresh interpreter on warden's own modules: the spec builder.

The `spawn` start method and the zygote each run `python -m <module>` in a
new sandbox, with this environment's packages (warden, msgspec, pyseccomp),
the worker's module and the supervisor's code_paths bound read-only and on
PYTHONPATH. `PythonSpecs` is the one place that decides which interpreter and
which directories that is; the zygote and the starters are handed one.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

from warden.profiles.model import Profile
from warden.supervisor.interpreter import sandbox_python
from warden.supervisor.policy import resolve_profile
from warden.supervisor.sandbox import SandboxSpec, build_spec

OUR_PACKAGES = ("warden", "msgspec", "pyseccomp")


def module_root(module: str) -> str | None:
    """The sys.path entry a module is imported from (to bind it into a sandbox)."""
    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not spec.origin and spec.submodule_search_locations:  # a namespace package
        return os.path.realpath(os.path.dirname(next(iter(spec.submodule_search_locations))))
    if not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    path = os.path.dirname(spec.origin)
    if spec.submodule_search_locations:  # a package: its parent dir is the root
        path = os.path.dirname(path)
    return os.path.realpath(path)


class PythonSpecs:
    """Builds the spec of a sandbox running `python -m <module_argv>` (see the module
    docstring); `code_paths` are bound in every one."""

    def __init__(self, code_paths: Sequence[str] = ()) -> None:
        self.code_paths = tuple(code_paths)

    def spec(self, module_argv: Sequence[str], profile: str | Profile, *modules: str,
             memory: int | None = None, timeout: float | None = None,
             seccomp_filter: bytes | None = None,
             memory_rlimit_only: bool = False) -> SandboxSpec:
        """A sandbox spec running `python -m <module_argv>` with our packages and `modules`
        bound."""
        launch = resolve_profile(profile)
        python = sandbox_python()
        roots: set[str] = set(python.path)
        for mod in (*OUR_PACKAGES, *modules):
            root = module_root(mod)
            if root:
                roots.add(root)
        roots.update(os.path.realpath(p) for p in self.code_paths)
        roots = {r for r in roots if not r.startswith(("/usr/", "/lib"))}
        pypath = ":".join(sorted(roots))
        binds = sorted(roots | set(python.binds))
        return build_spec([python.executable, "-s", "-m", *module_argv], launch,
                          ro_binds=binds,
                          env=[f"PYTHONPATH={pypath}"], memory=memory, timeout=timeout,
                          seccomp_filter=seccomp_filter, memory_rlimit_only=memory_rlimit_only)
