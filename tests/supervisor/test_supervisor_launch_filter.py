"""The filter a worker's own filter is stacked on (warden.supervisor.policy.launch_filter), checked
without forking: what it means for a call, per the profile pipeline's own evaluator."""

from __future__ import annotations

import errno

from warden.profiles import load_profile
from warden.profiles.compiler import intended
from warden.profiles.model import KILL_PROCESS, Action, ActionKind
from warden.supervisor.policy import errno_as_kill, launch_filter, worker_policy
from warden.supervisor.sandbox.seccomp import uses_notify

EPERM = Action(ActionKind.ERRNO, errno.EPERM)
ENOSYS = Action(ActionKind.ERRNO, errno.ENOSYS)


def test_under_a_strict_worker_errno_answers_become_kills() -> None:
    default, strict = load_profile("default"), load_profile("strict")
    hardened = errno_as_kill(default.seccomp, worker_policy(strict.seccomp))
    # strict kills ptrace; EPERM from below would pre-empt the worker's notification.
    assert intended(default.seccomp, "ptrace", [0] * 6) == {EPERM}
    assert intended(hardened, "ptrace", [0] * 6) == {KILL_PROCESS}
    assert intended(hardened, "unshare", [0] * 6) == {KILL_PROCESS}
    assert intended(hardened, "clone3", [0] * 6) == {ENOSYS}  # glibc's fallback stays
    assert intended(hardened, "openat", [0] * 6) == intended(default.seccomp, "openat", [0] * 6)


def test_under_a_permissive_worker_its_errno_answers_stay() -> None:
    default = load_profile("default")
    stacked = errno_as_kill(default.seccomp, worker_policy(default.seccomp))
    assert intended(stacked, "ptrace", [0] * 6) == {EPERM}
    # Without a known worker (the zygote's filter), every errno refusal is a kill.
    assert intended(errno_as_kill(default.seccomp), "ptrace", [0] * 6) == {KILL_PROCESS}


def test_the_launch_filter_holds_no_listener() -> None:
    default, strict = load_profile("default"), load_profile("strict")
    assert not uses_notify(launch_filter(default, strict))
    assert not uses_notify(launch_filter(default))
