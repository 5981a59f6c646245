"""Helpers for the sandbox tests: run tiny child programs in a real sandbox and read what they saw.

The same suite runs as root and as an ordinary uid (scripts/test re-runs it
under setpriv); `MODE` says which, and tests assert what each mode must show.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tests.interpreter import PYTHON as PYTHON  # re-exported for the sandbox tests
from tests.interpreter import python_env
from warden.profiles.model import Bind, Filesystem, Profile
from warden.supervisor.sandbox import Sandbox, Status, build_spec, spawn

MODE = "root" if os.geteuid() == 0 else "user"
WORKTREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = "/usr/bin/python3"

_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache",
           "/etc/passwd", "/etc/group", "/etc/localtime")

TEST_PROFILE = Profile(
    name="test", source="<tests/sandbox>",
    filesystem=Filesystem(binds=tuple(Bind(p, p, optional=True) for p in _SYSTEM)),
)


def filter_notifying(*names: str, errno_for: Sequence[tuple[str, int]] = ()) -> bytes:
    """A permissive filter (allow all) that reports `names` through user-notify.

    Tests of the sandbox's own mechanics use it, so they do not depend on a
    profile; the profile-specific tests load the built-in `default` profile.
    """
    import pyseccomp

    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for n in names:
        f.add_rule(pyseccomp.NOTIFY, n)
    for n, e in errno_for:
        f.add_rule(pyseccomp.ERRNO(e), n)
    with tempfile.TemporaryFile() as t:
        f.export_bpf(t)
        t.seek(0)
        return t.read()


PERMISSIVE = filter_notifying("acct")


def default_profile() -> Profile:
    from warden.profiles import load_profile

    prof: Profile = load_profile("default")
    return prof


@dataclass
class Result:
    status: Status
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out.strip().splitlines()[-1])


def world_dir() -> str:
    """A temp dir the sandbox's outer uid can traverse (root's pytest dirs are 0700)."""
    d = tempfile.mkdtemp(prefix="warden-test-")  # in the session's directory (conftest)
    os.chmod(d, 0o755)
    return d


def start(argv: Sequence[str], profile: Profile = TEST_PROFILE, *, bpf: bytes | None = None,
          stdin: int | None = None, **overrides: Any) -> tuple[Sandbox, Any, Any]:
    """Spawn `argv`; stdout/stderr go to temp files returned for reading."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller
    err = tempfile.TemporaryFile()  # noqa: SIM115
    if stdin is None:
        stdin = os.open(os.devnull, os.O_RDONLY)
        close_in = True
    else:
        close_in = False
    try:
        spec = build_spec(list(argv), profile,
                          seccomp_filter=PERMISSIVE if bpf is None and profile.name == "test"
                          else bpf,
                          stdio=(stdin, out.fileno(), err.fileno()), **overrides)
        box = spawn(spec)
    finally:
        if close_in:
            os.close(stdin)
    return box, out, err


def collect(box: Sandbox, out: Any, err: Any, timeout: float | None = 60) -> Result:
    st = box.wait(timeout)
    if st is None:
        box.kill()
        st = box.wait()
    assert st is not None
    box.close_channel()
    out.seek(0)
    err.seek(0)
    result = Result(st, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    out.close()
    err.close()
    return result


def run(argv: Sequence[str], profile: Profile = TEST_PROFILE, **kw: Any) -> Result:
    box, out, err = start(argv, profile, **kw)
    return collect(box, out, err)


def py(code: str, profile: Profile = TEST_PROFILE, **kw: Any) -> Result:
    """Run a CPython snippet in the sandbox (isolated mode, no site: quick start)."""
    return run([PY, "-I", "-S", "-c", code], profile, **kw)


def with_binds(profile: Profile, *binds: Bind) -> Profile:
    return replace(profile, filesystem=replace(profile.filesystem,
                                               binds=profile.filesystem.binds + binds))


def supervisor_env() -> dict[str, str]:
    env = python_env(WORKTREE)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
