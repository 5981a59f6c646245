"""Sandbox specs that run a fresh interpreter on warden's own modules: the spec builder.

The `spawn` start method and the zygote each run `python -m <module>` in a
new sandbox, under this process's own interpreter (warden.supervisor.interpreter),
with the files that warden, msgspec, pyseccomp and the worker's module are
imported from (warden.supervisor.coderoots: a package's directory, not the
sys.path entry around it) and the supervisor's code_paths bound read-only and
on PYTHONPATH. `PythonSpecs` is the one place that decides which interpreter and
which directories that is; the zygote and the starters are handed one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from warden.profiles.model import Profile
from warden.supervisor.coderoots import code_roots
from warden.supervisor.interpreter import SYSTEM_PREFIXES, sandbox_python
from warden.supervisor.policy import resolve_profile
from warden.supervisor.sandbox import SandboxSpec, build_spec

OUR_PACKAGES = ("warden", "msgspec", "pyseccomp")


class PythonSpecs:
    """Builds the spec of a sandbox running `python -m <module_argv>` (see the module
    docstring); `code_paths` are bound in every one."""

    def __init__(self, code_paths: Sequence[str] = ()) -> None:
        self.code_paths = tuple(code_paths)

    def spec(self, module_argv: Sequence[str], profile: str | Profile, *modules: str,
             memory: int | None = None, timeout: float | None = None,
             seccomp_filter: bytes | None = None,
             memory_rlimit_only: bool = False,
             stdio: tuple[int, int, int] = (0, 1, 2)) -> SandboxSpec:
        """A sandbox spec running `python -m <module_argv>` with our packages and `modules`
        bound; `stdio`: the fds (ours) that become its 0, 1 and 2."""
        launch = resolve_profile(profile)
        python = sandbox_python()
        code = code_roots((*OUR_PACKAGES, *modules), visible=(*SYSTEM_PREFIXES, *python.binds))
        own = [os.path.realpath(p) for p in self.code_paths]
        own = [p for p in own if not p.startswith(SYSTEM_PREFIXES)]
        pypath = ":".join(dict.fromkeys((*python.path, *code.path_entries, *own)))
        binds = sorted({*python.binds, *code.binds, *own})
        return build_spec([python.executable, "-s", "-m", *module_argv], launch,
                          ro_binds=binds,
                          env=[f"PYTHONPATH={pypath}"], memory=memory, timeout=timeout,
                          seccomp_filter=seccomp_filter, memory_rlimit_only=memory_rlimit_only,
                          stdio=stdio)

    def code_binds(self, modules: Sequence[str]) -> frozenset[str]:
        """What a sandbox must bind, beyond the interpreter, to import `modules`
        (a zygote that lacks some of it cannot start a worker of those modules)."""
        python = sandbox_python()
        return frozenset(code_roots(modules, visible=(*SYSTEM_PREFIXES, *python.binds)).binds)
