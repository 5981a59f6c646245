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
import site
import sys
from collections.abc import Sequence

from warden.profiles.model import Profile
from warden.supervisor.errors import SpawnUnavailable
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


def sandbox_python() -> tuple[str, list[str]]:
    """An interpreter a sandbox can run, and the site dirs to put on its path.

    This interpreter is used when it lives under /usr (bound by the launch
    profile); otherwise (a venv or pyenv build under a private home) the
    system's python3 of the same major.minor, with this environment's
    site-packages on PYTHONPATH (same ABI, so compiled extensions load).
    """
    exe = os.path.realpath(sys.executable)
    sites = [os.path.realpath(p) for p in site.getsitepackages() if os.path.isdir(p)]
    if exe.startswith("/usr/"):
        return exe, sites
    want = f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"
    if os.path.exists(want):
        return want, sites
    raise SpawnUnavailable(f"start_method='spawn' needs an interpreter a sandbox can bind: "
                           f"{exe} is outside /usr and {want} does not exist")


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
        python, site_dirs = sandbox_python()
        roots: set[str] = set(site_dirs)
        for mod in (*OUR_PACKAGES, *modules):
            root = module_root(mod)
            if root:
                roots.add(root)
        roots.update(os.path.realpath(p) for p in self.code_paths)
        roots = {r for r in roots if not r.startswith(("/usr/", "/lib"))}
        pypath = ":".join(sorted(roots))
        return build_spec([python, "-s", "-m", *module_argv], launch, ro_binds=sorted(roots),
                          env=[f"PYTHONPATH={pypath}"], memory=memory, timeout=timeout,
                          seccomp_filter=seccomp_filter, memory_rlimit_only=memory_rlimit_only)
