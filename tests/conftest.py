"""Suite-wide rules: every test's files live in one directory removed at the end,
and under CI a skip is a failure unless its reason is one this machine may have.

Why the skip rule: CI runs as root on a machine that has every mechanism warden
uses (user namespaces, seccomp user-notify, Landlock, cgroups, i386 emulation).
A test that skips there has lost its coverage silently, so a green run would
mean less than it says. The only skips CI accepts are those of the ordinary-uid
run for what needs root (reasons that start with "needs root").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

ACCEPTED_UNDER_CI = ("needs root",)
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed_warden() -> str:
    """The tests test the package as users get it: the installed wheel, never
    the checkout's folders (scripts/setup installs it). Say so plainly when the
    import would come from elsewhere."""
    import importlib.util

    found = importlib.util.find_spec("warden")
    origin = found.origin if found else None
    sources = tuple(os.path.join(CHECKOUT, d) + os.sep
                    for d in ("warden_pkg", "supervisor", "profiles", "ipc", "build"))
    if origin is None or os.path.realpath(origin).startswith(sources):
        raise pytest.UsageError(f"warden is not installed (found {origin!r}): "
                                "run scripts/setup, which installs the wheel into .venv")
    return origin


WARDEN_ORIGIN = _installed_warden()


def _session_tmp() -> str:
    """One directory for every temporary file of this run, traversable by the
    sandbox's outer uid (root's own temporary directories are 0700)."""
    base = os.environ.get("WARDEN_TEST_TMP")
    if base and os.path.isdir(base):
        return base
    base = tempfile.mkdtemp(prefix=f"warden-tests-{os.getpid()}-")
    os.chmod(base, 0o755)
    os.environ["WARDEN_TEST_TMP"] = base
    return base


SESSION_TMP = _session_tmp()
# Everything the tests make with tempfile lands there too, and goes with it; so do
# the filter cache and its key (warden run keeps them under XDG_CACHE_HOME and
# XDG_STATE_HOME), which would otherwise outlive the run in the real home.
tempfile.tempdir = SESSION_TMP
for _var in ("XDG_CACHE_HOME", "XDG_STATE_HOME"):
    os.environ[_var] = os.path.join(SESSION_TMP, _var.lower())


def _remove_tree(path: str) -> None:
    """Remove `path`, setuid and setgid files first (a test may have made a
    setuid-root copy of a program), and whatever a sandbox uid left behind."""
    for root, dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.lstat(p).st_mode & (stat.S_ISUID | stat.S_ISGID):
                    os.unlink(p)
        for name in dirs:
            # A 0500 directory a child made would stop rmtree.
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import sys

    # The checkout's supervisor/, profiles/ and ipc/ are source folders, not
    # packages: a test that imported one by its bare name tested the checkout.
    stray = sorted(m for m in ("supervisor", "profiles", "ipc") if m in sys.modules)
    if stray:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nwarden tests: imported the checkout's folders by bare name: {stray}")
    if os.environ.get("WARDEN_TEST_TMP") == SESSION_TMP and os.getpid() == _OWNER_PID:
        _remove_tree(SESSION_TMP)


_OWNER_PID = os.getpid()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(
        report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if os.geteuid() != 0 and reason.startswith(ACCEPTED_UNDER_CI):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI for a reason this machine should not have: {reason}\n"
                       f"(CI accepts only skips of the ordinary-uid run that start with "
                       f"{ACCEPTED_UNDER_CI!r})")


def _hypothesis_profiles() -> None:
    """`ci` replays the same examples every run (a red CI is reproducible); `explore`
    is the long search run by hand or a nightly job:
    HYPOTHESIS_PROFILE=explore scripts/test tests/ipc tests/profiles."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", derandomize=True, database=None, print_blob=True,
                              deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", database=None, deadline=None)
    settings.register_profile("explore", max_examples=20_000, database=None, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if ci else "dev"))


_hypothesis_profiles()
