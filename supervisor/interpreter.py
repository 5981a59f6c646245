"""The interpreter a sandboxed Python worker runs, and what of the host it needs.

Any CPython embeds: the system's, pyenv's, uv's or conda's, and venvs of any of
them. A worker runs the same interpreter as its supervisor (the same ABI, so the
compiled extensions of its site-packages load), bound read-only with nothing
else of the host: the interpreter's own installation prefix (the executable,
the stdlib with lib-dynload, libpython) and the site-packages directories this
environment uses, found from what `sys` and `site` report.
"""

from __future__ import annotations

import functools
import os
import site
import sys
from collections.abc import Iterable
from typing import NamedTuple

# What every launch profile already binds read-only: an interpreter here needs
# no bind of its own.
SYSTEM_PREFIXES = ("/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/")


class SandboxPython(NamedTuple):
    executable: str          # run inside the sandbox, at the same path
    binds: tuple[str, ...]   # directories to bind read-only at the same paths
    path: tuple[str, ...]    # PYTHONPATH entries: a venv's site-packages


def is_under(path: str, dirs: Iterable[str]) -> bool:
    """True when `path` is one of `dirs` or lies below one (by path, not by file)."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


@functools.cache
def sandbox_python() -> SandboxPython:
    """This process's interpreter, the directories a sandbox must see to run it,
    and the site-packages to put on its path.

    The executable is the resolved one: a venv's bin/python links to its base
    interpreter, and the venv's site-packages come in through PYTHONPATH, so the
    venv's folder need not be bound (only its site-packages are)."""
    exe = os.path.realpath(sys.executable)
    sites = tuple(dict.fromkeys(os.path.realpath(p) for p in site.getsitepackages()
                                if os.path.isdir(p)))
    binds: list[str] = []
    if not is_under(exe, SYSTEM_PREFIXES):
        for prefix in dict.fromkeys((os.path.realpath(sys.base_prefix),
                                     os.path.realpath(sys.base_exec_prefix))):
            if not is_under(prefix, SYSTEM_PREFIXES) and prefix != "/":
                binds.append(prefix)
        if not is_under(exe, binds):  # an executable kept outside its prefix
            binds.append(os.path.dirname(exe))
    for s in sites:
        if not is_under(s, (*SYSTEM_PREFIXES, *binds)):
            binds.append(s)
    # Outside a venv the interpreter finds its own site-packages; a venv's come
    # through PYTHONPATH, since the sandbox runs the base interpreter.
    in_venv = os.path.realpath(sys.prefix) != os.path.realpath(sys.base_prefix)
    return SandboxPython(exe, tuple(binds), sites if in_venv else ())
