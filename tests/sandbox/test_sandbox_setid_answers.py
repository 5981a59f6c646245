"""set*id and chown calls answer as the kernel answers any unprivileged process.

The sandbox's user namespace maps one id (1000 inside), and the kernel checks
that an id is mapped before it checks privilege: setuid(0) would get EINVAL,
where programs expect (and test for) EPERM. Under every profile that allows
these calls a guard filter answers EPERM for any id but the process's own and
-1; the same probe run outside, by an ordinary process, is the reference."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.sandbox.sandbox_util import (
    MODE,
    PERMISSIVE,
    PY,
    TEST_PROFILE,
    default_profile,
    filter_notifying,
    run,
    world_dir,
)
from warden.profiles import compiler, load_profile
from warden.supervisor.sandbox import Outcome, build_spec
from warden.supervisor.sandbox.seccomp import assemble, guard_policy, parent_guard
from warden.supervisor.sandbox.userns import INNER_ID

# Run inside and outside: what each call answers, by the process's own ids.
PROBE = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
me, other, keep = os.getuid(), os.getuid() + 1, -1
def call(f, *a):
    try:
        f(*a)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
out = [
    call(os.setuid, 0), call(os.setuid, other), call(os.setgid, 0), call(os.setgid, other),
    call(os.setreuid, 0, keep), call(os.setreuid, keep, other), call(os.setregid, other, me),
    call(os.setresuid, 0, 0, 0), call(os.setresuid, keep, keep, other),
    call(os.setresgid, 0, 0, 0), call(os.setresgid, keep, other, keep),
    call(os.setgroups, []), call(os.setgroups, [0]), call(os.setgroups, [me]),
    # What an unprivileged process may do: its own ids, and -1 for "no change".
    call(os.setuid, me), call(os.setgid, me), call(os.setreuid, keep, keep),
    call(os.setreuid, me, me), call(os.setregid, keep, me), call(os.setresuid, keep, keep, keep),
    call(os.setresuid, me, me, me), call(os.setresgid, me, keep, me),
    # setuid(-1) names no id: EINVAL everywhere.
    call(os.setuid, 2**32 - 1),
    # setfsuid/setfsgid never fail: they return the old id, changing it only to an id
    # the process may take.
    libc.setfsuid(0) == me, libc.setfsuid(keep) == me, libc.setfsgid(other) == me,
    libc.setfsgid(keep) == me,
    os.getresuid() == (me,) * 3, os.getresgid() == (me,) * 3,
]
# The chown family on a file of its own: another owner or group is EPERM, its own
# ids and -1 are the kernel's to judge (ok).
import tempfile
fd, name = tempfile.mkstemp()
dfd = os.open(os.path.dirname(name), os.O_RDONLY)
base = os.path.basename(name)
out += [
    call(os.chown, name, 0, keep), call(os.chown, name, keep, 0),
    call(os.chown, name, other, keep), call(os.lchown, name, 0, keep),
    call(os.fchown, fd, keep, other), call(lambda: os.chown(base, 0, 0, dir_fd=dfd)),
    call(os.chown, name, me, me), call(os.fchown, fd, keep, keep),
]
os.unlink(name)
print(json.dumps(out))
"""

SETID = ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid")
CHOWN = ("chown", "fchown", "lchown", "fchownat")
EXPECTED = ["EPERM"] * 14 + ["ok"] * 8 + ["EINVAL"] + [True] * 6 + ["EPERM"] * 6 + ["ok"] * 2


def _outside() -> list[object]:
    """The probe in an ordinary process on the host (as root: dropped to uid 4343)."""
    drop = ["setpriv", "--reuid=4343", "--regid=4343", "--clear-groups"] if MODE == "root" \
        else []
    r = subprocess.run([*drop, PY, "-I", "-S", "-c", PROBE], capture_output=True, text=True,
                       check=True, timeout=60)
    got: list[object] = json.loads(r.stdout)
    return got


@pytest.mark.parametrize("profile", ["default", "test"])
def test_other_ids_get_eperm_like_outside(profile: str) -> None:
    prof = default_profile() if profile == "default" else TEST_PROFILE
    r = run([PY, "-I", "-S", "-c", PROBE], prof, **({"bpf": None} if profile == "default"
                                                     else {}))
    assert r.status.outcome is Outcome.OK, (r.status, r.err)
    inside = json.loads(r.out)
    assert inside == EXPECTED
    assert inside == _outside()


def test_a_writable_owned_bind_keeps_the_answers() -> None:
    r = run([PY, "-I", "-S", "-c", PROBE], default_profile(), bpf=None,
            owned_binds=[f"{world_dir()}:/w"])
    assert json.loads(r.out) == EXPECTED, r


def test_a_profile_that_kills_setuid_still_kills_it() -> None:
    """The guard answers only calls the profile allows: a kill stays a kill, reported."""
    bpf = filter_notifying("setuid")
    r = run([PY, "-I", "-S", "-c", "import os; os.setresuid(0, 0, 0)"], bpf=bpf)
    assert r.status.exit_code != 0 and "PermissionError" in r.err, r  # allowed: answered
    r = run([PY, "-I", "-S", "-c", "import os; os.setuid(0)"], bpf=bpf)
    assert r.status.outcome is Outcome.SECCOMP_VIOLATION, r.status
    assert r.status.violation is not None and r.status.violation.syscall == "setuid"


@pytest.mark.parametrize("name", ["strict", "python-worker"])
def test_strict_and_python_worker_get_no_guard(name: str) -> None:
    code = compiler.compile_policy(load_profile(name).seccomp, kill_as_notify=True)
    assert guard_policy(code, own_id=INNER_ID, owned_writable=False) is None
    assert parent_guard(code) == b""


def test_a_sandbox_gets_the_guard_only_where_needed() -> None:
    none = filter_notifying(*SETID, *CHOWN)
    assert parent_guard(none) == b""
    assert parent_guard(filter_notifying(*SETID))  # chown allowed: its part alone
    assert parent_guard(PERMISSIVE)
    assert parent_guard(none, (("/src", "/w"),))  # the owned bind's part alone
    # A sandbox hosting nested user namespaces (a zygote: each worker is one) gets no
    # set*id answers: its workers' own filters, stacked later, decide (an errno here
    # would outrank their kills).
    nested = (("max_user_namespaces", 8),)
    assert parent_guard(PERMISSIVE, (), nested) == b""


def test_a_zygote_like_sandbox_answers_as_before() -> None:
    """Limits raised after build_spec, as the zygote does: the launch decides on the
    spec it starts. And a writable owned bind with them is refused there too."""
    import dataclasses

    from warden.supervisor.sandbox import spawn
    from warden.supervisor.sandbox.seccomp import GuardError

    spec = build_spec([PY, "-I", "-S", "-c", "import os; os.setuid(0)"], TEST_PROFILE,
                      seccomp_filter=PERMISSIVE)
    nested = dataclasses.replace(spec, userns_limits=(("max_user_namespaces", 4),))
    assert parent_guard(nested.seccomp_filter, (), nested.userns_limits) == b""
    owned = build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=PERMISSIVE,
                       owned_binds=[f"{world_dir()}:/w"])
    with pytest.raises(GuardError) as e:
        spawn(dataclasses.replace(owned, userns_limits=(("max_user_namespaces", 4),)))
    assert "refused with userns_limits max_user_namespaces above 0" in str(e.value)


@pytest.mark.parametrize("owned", [False, True], ids=["setid", "setid+owned"])
@pytest.mark.parametrize("profile", ["permissive", "default", "some killed", "all killed"])
def test_the_guard_means_its_policy(profile: str, owned: bool) -> None:
    """The hand-written BPF against the compiler's own verifier: every rule's boundary,
    each 32-bit half, the foreign architectures (user-notify, which the profile's own
    filter outranks)."""
    code = {"permissive": PERMISSIVE,
            "default": compiler.compile_policy(load_profile("default").seccomp,
                                               kill_as_notify=True),
            "some killed": filter_notifying("setuid", "setresgid"),
            "all killed": filter_notifying(*SETID)}[profile]
    policy = guard_policy(code, own_id=INNER_ID, owned_writable=owned)
    if policy is None:
        assert (profile, owned) == ("all killed", False)
        return
    calls = {r.syscall for r in policy.rules}
    setid = set(SETID)
    assert calls & setid == {"permissive": setid, "default": setid,
                             "some killed": setid - {"setuid", "setresgid"},
                             "all killed": set()}[profile]
    compiler.verify(policy, assemble(policy), kill_as_notify=True)
