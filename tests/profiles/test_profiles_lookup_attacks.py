"""An untrusted checkout plants allow-all profiles named like the built-ins.

Run from a directory holding ./profiles/default.toml and ./profiles/strict.toml
that allow everything, `warden run` (no -p, and -p strict) and the embedding
API (profile="default" / "strict") must still get the built-ins: the proof
is a call the built-in refuses and the planted file would have allowed. A
file of that name on the user's own search path is refused with an error
that names it.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.interpreter import PYTHON, python_env
from tests.supervisor.util import CALC, PRELOAD, WORKTREE, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor
from warden.supervisor.handle import WorkerDied
from warden.supervisor.sandbox import Outcome

ALLOW_ALL = """description = "planted"
[seccomp]
default-action = "allow"
bad-arch-action = "kill-process"
[filesystem]
ro = ["/usr", { source = "/lib", optional = true }, { source = "/lib64", optional = true },
      { source = "/bin", optional = true }]
"""
# move_pages(self, 1 page, MPOL_MF_MOVE_ALL): default kills it; where a filter
# let it through, the kernel refuses it (no CAP_SYS_NICE): PermissionError.
UNLISTED = [
    "/usr/bin/python3", "-I", "-S", "-c",
    "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
    "libc.syscall(279, 0, 1, 0, 0, 0, 4); raise OSError(ctypes.get_errno(), 'move_pages')",
]


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """An untrusted working directory with allow-all default and strict profiles."""
    tmp_path.chmod(0o755)
    (tmp_path / "profiles").mkdir()
    for name in ("default", "strict"):
        (tmp_path / "profiles" / f"{name}.toml").write_text(ALLOW_ALL)
    return tmp_path


def warden(cwd: Path, *args: str, xdg: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**python_env(WORKTREE), "PYTHONDONTWRITEBYTECODE": "1", "WARDEN_NO_CACHE": "1",
           "XDG_CONFIG_HOME": str(xdg or cwd / "no-such-config")}
    env.pop("WARDEN_PROFILE_PATH", None)
    return subprocess.run([PYTHON, "-m", "warden", "run", "--json-status", "-", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_control_the_planted_profile_would_let_the_call_through(checkout: Path) -> None:
    r = warden(checkout, "-p", "./profiles/default.toml", "--", *UNLISTED)
    # Asked for by its path, the file is used: no filter, the kernel refuses (no CAP).
    assert (r.returncode, json.loads(r.stdout)["outcome"]) == (1, "exited"), r.stderr
    assert "PermissionError" in r.stderr


@pytest.mark.parametrize("option", [[], ["-p", "default"]])
def test_warden_run_in_a_hostile_checkout_gets_the_builtin_default(checkout: Path,
                                                                   option: list[str]) -> None:
    r = warden(checkout, *option, "--", *UNLISTED)
    assert r.returncode == 128 + signal.SIGSYS, r.stdout + r.stderr
    st = json.loads(r.stdout)
    assert (st["outcome"], st["violation"]["syscall"]) == ("seccomp_violation", "move_pages")


def test_warden_run_p_strict_is_the_builtin_strict(checkout: Path) -> None:
    """The built-in strict refuses execve, so warden refuses to run a program under it;
    the planted one would have run it."""
    r = warden(checkout, "-p", "strict", "--", "/bin/true")
    assert r.returncode == 125, r.stdout + r.stderr
    assert "profile strict: its seccomp filter refuses execve" in r.stderr


def test_a_user_profile_named_like_a_builtin_is_refused(checkout: Path) -> None:
    xdg = checkout / "xdg"
    (xdg / "warden" / "profiles").mkdir(parents=True)
    planted = xdg / "warden" / "profiles" / "default.toml"
    planted.write_text(ALLOW_ALL)
    r = warden(checkout, "--", "/bin/true", xdg=xdg)
    assert r.returncode == 125, r.stdout + r.stderr
    assert f'{planted}: error: this file has the name of the built-in profile "default"' \
        in r.stderr
    assert "rename it" in r.stderr


@pytest.mark.parametrize("method", ["spawn", "zygote", "fork"])
def test_the_api_profile_strict_is_the_builtin(checkout: Path, method: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from warden.supervisor import policy

    monkeypatch.chdir(checkout)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(checkout / "no-such-config"))
    monkeypatch.delenv("WARDEN_PROFILE_PATH", raising=False)
    policy._profile.cache_clear()  # resolved names are cached per process

    async def main() -> None:
        async with Supervisor(start_method=method, zygote_preload=PRELOAD) as s:
            w = await s.spawn(Calc, CALC, profile="strict")
            assert await w.remote.square(3) == 9
            with pytest.raises(WorkerDied):
                await w.remote.act("open")  # killed under the built-in strict
            st = await w.wait()
            assert st.outcome is Outcome.SECCOMP_VIOLATION
            # The supervisor carries on: a sibling under the same name works.
            w2 = await s.spawn(Calc, CALC, profile="strict")
            assert await w2.remote.square(4) == 16
    try:
        run(main())
    finally:
        policy._profile.cache_clear()


def test_the_api_profile_default_is_the_builtin(checkout: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from warden.supervisor import policy

    monkeypatch.chdir(checkout)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(checkout / "no-such-config"))
    policy._profile.cache_clear()

    async def main() -> None:
        async with Supervisor(start_method="spawn", zygote_preload=PRELOAD) as s:
            w = await s.spawn_program(
                ["/usr/bin/python3", "-I", "-S", "-c",
                 "import ctypes, time; ctypes.CDLL(None).syscall(279, 0, 0); time.sleep(30)"],
                interface=Calc, profile="default")
            st = await w.wait()
            assert st.outcome is Outcome.SECCOMP_VIOLATION
            assert st.violation is not None and st.violation.syscall == "move_pages"
    try:
        run(main())
    finally:
        policy._profile.cache_clear()


