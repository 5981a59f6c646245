"""Invariants 1, 6 and 7 against forked workers: no survivor, no view of the host, no
channel to a sibling but those the supervisor made.

Every attack runs in a real worker under `default` (so the call reaches the kernel:
what holds is the namespaces, Landlock and the lock on the parent-death signal,
not only seccomp), and the supervisor, the zygote and the other workers carry on.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import secrets
import signal
import socket
import subprocess
import time

import pytest

from tests.interpreter import PYTHON, python_env
from tests.supervisor.isolation_workers import Probe
from tests.supervisor.util import METHODS, WORKTREE, run
from warden.profiles import load_profile
from warden.profiles.model import ALLOW, SeccompPolicy
from warden.supervisor import Supervisor, WorkerDied
from warden.supervisor.confine import landlock_abi
from warden.supervisor.core import SpawnError
from warden.supervisor.sandbox import Outcome

PROBE = "tests.supervisor.isolation_workers:ProbeImpl"
PRELOAD = ("tests.supervisor.isolation_workers",)


def sup(method: str, **kw: object) -> Supervisor:
    return Supervisor(start_method=method, zygote_preload=PRELOAD, **kw)  # type: ignore[arg-type]


def named(marker: str) -> list[int]:
    """Host pids of the processes whose /proc/PID/comm is `marker` (readable by anyone)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() == marker:
                        out.append(int(name))
            except OSError:
                continue
    return out


_SURVIVOR = """
import asyncio, sys
sys.path.insert(0, {root!r})
from warden.supervisor import Supervisor
from tests.supervisor.isolation_workers import Probe
async def main():
    async with Supervisor(start_method={method!r},
                          zygote_preload=["tests.supervisor.isolation_workers"]) as s:
        w = await s.spawn(Probe, {target!r}, profile="default")
        print(await w.remote.escape({marker!r}), flush=True)
        await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.parametrize("method", METHODS)
def test_no_process_of_a_worker_outlives_a_sigkilled_supervisor(method: str) -> None:
    """The worker clears its parent-death signal and leaves a setsid'd grandchild that
    clears its own; the supervisor (a real process) is then SIGKILLed. The kernel must
    end the whole tree: a forked worker cannot clear the signal (EPERM), and it is pid 1
    of its PID namespace, so its death takes the grandchild; under spawn the sandbox's
    init, which the workload cannot change, does the same."""
    marker = "wdn" + secrets.token_hex(5)
    proc = subprocess.Popen([PYTHON, "-c", _SURVIVOR.format(root=WORKTREE, method=method,
                                                             target=PROBE, marker=marker)],
                            stdout=subprocess.PIPE, env=python_env(WORKTREE), cwd="/")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip(), "the supervisor ended before the attack ran"
        err = int(line)
        if method == "spawn":
            assert err == 0  # the workload may: its init is not the workload
        else:
            assert err == errno.EPERM
        tree = named(marker)
        assert len(tree) == 2, tree  # the worker and its grandchild
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    while named(marker):  # bounded by the test timeout, never by a clock
        time.sleep(0.01)


def test_parent_death_signal_cannot_be_changed_to_a_harmless_one() -> None:
    """Not only 0: any PR_SET_PDEATHSIG (a catchable signal would do) is refused."""
    async def main() -> None:
        async with sup("fork") as s:
            w = await s.spawn(Probe, PROBE, profile="default")
            assert await w.remote.escape("wdn" + secrets.token_hex(5)) == errno.EPERM
            assert await w.remote.probe("sleep", 1) == 0
    run(main())


# ------------------------------------------------------------------ what it sees

_CMDLINE = """
import asyncio, sys
sys.path.insert(0, {root!r})
from warden.supervisor import Supervisor
from tests.supervisor.isolation_workers import Probe
async def main():
    async with Supervisor(start_method={method!r},
                          zygote_preload=["tests.supervisor.isolation_workers"]) as s:
        w = await s.spawn(Probe, {target!r}, profile="default")
        read, hits = await w.remote.proc_hits({secret!r}.encode())
        print(read, hits, flush=True)
asyncio.run(main())
"""


@pytest.mark.parametrize("method", METHODS)
def test_no_cmdline_or_environ_inside_shows_the_supervisors_secrets(method: str) -> None:
    """A secret in the supervisor's argv (`--api-token=`) and in its environment: no
    /proc/*/cmdline or /proc/*/environ a worker can read holds it, not even its own
    (a fork of the supervisor) or its init's (a fork of it too)."""
    secret = "tok" + secrets.token_hex(12)
    env = python_env(WORKTREE)
    env["WARDEN_TEST_SECRET"] = secret
    out = subprocess.run([PYTHON, "-c", _CMDLINE.format(root=WORKTREE, method=method,
                                                        target=PROBE, secret=secret),
                          f"--api-token={secret}"],
                         stdout=subprocess.PIPE, env=env, cwd="/", check=True)
    read, hits = (int(x) for x in out.stdout.split())
    assert read >= 1  # it did read something: its own cmdline at least
    assert hits == 0


# ------------------------------------------------------------------ keyring

_libc = ctypes.CDLL(None, use_errno=True)
_NR_ADD_KEY = {"x86_64": 248, "aarch64": 217}[os.uname().machine]
_NR_KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
_KEY_SPEC_SESSION_KEYRING = -3
_KEYCTL_INVALIDATE = 21


def _add_session_key(payload: bytes) -> int:
    serial = int(_libc.syscall(_NR_ADD_KEY, b"user", b"warden-test-key", payload,
                               len(payload), _KEY_SPEC_SESSION_KEYRING))
    if serial == -1:
        err = ctypes.get_errno()
        pytest.skip(f"add_key: {os.strerror(err)}")
    return serial


@pytest.mark.parametrize("method", METHODS)
def test_worker_does_not_possess_the_callers_session_keyring(method: str) -> None:
    """A key in the supervisor's session keyring is not listed in the worker's
    /proc/keys. A fork worker runs under a profile that allows every call, so the
    kernel, not seccomp, answers its KEYCTL_READ by serial: refused. (Spawn and
    zygote workers stay under a filter beneath theirs that refuses keyctl.)"""
    anything = dataclasses.replace(load_profile("default"), name="anything",
                                   seccomp=SeccompPolicy(default_action=ALLOW))
    serial = _add_session_key(b"warden-secret-payload")
    try:
        async def main() -> None:
            async with sup(method) as s:
                w = await s.spawn(Probe, PROBE,
                                  profile=anything if method == "fork" else "default")
                assert await w.remote.probe("list_key", serial) == errno.ENOENT
                if method == "fork":
                    assert await w.remote.probe("read_key", serial) in (errno.EACCES,
                                                                        errno.ENOKEY)
                assert await w.remote.probe("sleep", 1) == 0
        run(main())
    finally:
        _libc.syscall(_NR_KEYCTL, _KEYCTL_INVALIDATE, serial)


# ------------------------------------------------------------------ siblings

@pytest.mark.parametrize("method", ["zygote", "fork"])
def test_sibling_workers_share_no_abstract_socket_ipc_or_tmp(method: str) -> None:
    """One worker binds an abstract unix socket, creates a SysV shared memory segment
    and writes /tmp; its sibling can connect to none of it, find no segment, see no
    file. Each can still do it for itself (the probes work)."""
    key = 0x5A000000 | secrets.randbelow(1 << 20)

    async def main() -> None:
        async with sup(method) as s:
            a = await s.spawn(Probe, PROBE, profile="default")
            b = await s.spawn(Probe, PROBE, profile="default")
            assert await a.remote.probe("bind_abstract", key) == 0
            assert await a.remote.probe("connect_abstract", key) == 0
            assert await a.remote.probe("shm_create", key) == 0
            assert await a.remote.probe("shm_get", key) == 0
            assert await a.remote.probe("tmp_write", key) == 0
            assert await a.remote.probe("tmp_see", key) == 0
            # a different network namespace would answer ECONNREFUSED; the Landlock
            # scope answers EPERM (both mean: not reached)
            assert await b.remote.probe("connect_abstract", key) in (
                errno.EPERM, errno.ECONNREFUSED)
            assert await b.remote.probe("shm_get", key) == errno.ENOENT
            assert await b.remote.probe("tmp_see", key) == errno.ENOENT
            assert await a.remote.probe("tmp_see", key) == 0  # a kept its own
    run(main())


def test_shared_tmp_is_shared_when_asked() -> None:
    key = secrets.randbelow(1 << 20)

    async def main() -> None:
        async with sup("zygote", shared_tmp=True) as s:
            a = await s.spawn(Probe, PROBE, profile="default")
            b = await s.spawn(Probe, PROBE, profile="default")
            assert await a.remote.probe("tmp_write", key) == 0
            assert await b.remote.probe("tmp_see", key) == 0
    run(main())


@pytest.mark.skipif(landlock_abi() < 6, reason="Landlock scopes need ABI 6 (Linux 6.12)")
def test_abstract_socket_of_the_host_is_out_of_a_fork_workers_reach() -> None:
    """A fork worker shares the supervisor's network namespace: only its Landlock scope
    keeps it from connecting to the host's abstract sockets."""
    key = secrets.randbelow(1 << 20)
    host = socket.socket(socket.AF_UNIX)
    host.bind(f"\0warden-test-{key}")
    host.listen()
    try:
        async def main() -> None:
            async with sup("fork") as s:
                w = await s.spawn(Probe, PROBE, profile="default")
                assert await w.remote.probe("connect_abstract", key) == errno.EPERM
        run(main())
    finally:
        host.close()



# ------------------------------------------------------------------ profiles x methods

BUILT_INS = ("default", "strict", "python-worker", "network-client")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("profile", BUILT_INS)
def test_every_built_in_profile_works_or_is_refused_up_front(method: str, profile: str) -> None:
    """Each built-in profile serves under each start method, or spawn() refuses it before
    anything starts with a sentence naming the start method to use."""
    async def main() -> None:
        async with sup(method) as s:
            if method == "zygote" and profile == "network-client":
                with pytest.raises(SpawnError) as info:
                    await s.spawn(Probe, PROBE, profile=profile)
                assert "use start_method='spawn'" in str(info.value)
                assert not s.workers
                return
            w = await s.spawn(Probe, PROBE, profile=profile)
            assert await w.remote.probe("sleep", 1) == 0
            if profile == "network-client":  # it reaches the host's network
                server = socket.create_server(("127.0.0.1", 0))
                try:
                    port = server.getsockname()[1]
                    assert await w.remote.probe("inet", port) == 0
                finally:
                    server.close()
    run(main())


@pytest.mark.parametrize("call", ["socket_inet", "mount"])
def test_a_call_the_zygotes_filter_refuses_too_is_named(call: str) -> None:
    """A strict zygote worker's call that the zygote's own filter refuses as well ends
    as a seccomp violation naming the call (the worker's listener reports it), not as
    an unrecorded SIGSYS."""
    async def main() -> None:
        async with sup("zygote") as s:
            w = await s.spawn(Probe, PROBE, profile="strict")
            with pytest.raises(WorkerDied):
                await w.remote.probe(call, 0)
            st = await w.wait()
            assert st.outcome is Outcome.SECCOMP_VIOLATION
            assert st.violation is not None
            assert st.violation.syscall == ("socket" if call == "socket_inet" else "mount")
            assert "not recorded" not in st.reason
            other = await s.spawn(Probe, PROBE, profile="strict")
            assert await other.remote.probe("sleep", 1) == 0
    run(main())
