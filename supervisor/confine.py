"""Forking a worker that confines itself: used by the zygote and by the `fork` start method.

The forked worker is pid 1 of its own PID namespace inside its own user
namespace, with its own mount and IPC namespaces (one clone): it cannot
name, signal or ptrace its siblings, the zygote or the supervisor, because
none of them exists in its PID namespace. Then, still running trusted code
and holding the capabilities of its new user namespace: its own session,
the parent-death signal, locked by a filter (as its namespace's init it
takes every descendant with it when it dies, so it must die with its
parent), the parent's argv and environ strings overwritten, its id mapped,
its own /proc, /tmp, keyring and Landlock domain (`_isolate`), only the
channel (at fd 3) left open, capabilities cleared, and the worker runtime
takes over (rlimits, non-dumpable, no_new_privs, the profile's seccomp
filter; see worker_main).

A quirk of being a namespace's init: signals the worker sends itself with
no handler installed are ignored by the kernel (faults such as SIGSEGV and
seccomp kills still end it; SIGKILL from the supervisor always does).
"""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
import socket
import struct
import sys
from typing import NamedTuple, NoReturn

from warden.errors import EXIT_SETUP
from warden.supervisor.errors import ConfineError
from warden.supervisor.sandbox import landlock, self_confine
from warden.supervisor.sandbox.lowlevel import (
    close_all,
    recv_with_fds,
    single_threaded,
    wait_readable,
)
from warden.supervisor.sandbox.spec import BASE_PATH, DEFAULT_OUTER_ID

_PID = struct.Struct("=i")

class Isolation(NamedTuple):
    """What a forked worker sets up for itself beyond its user and PID namespaces.

    own_keyring: join a new session keyring (a fork of the supervisor possesses
    the supervisor's; the zygote's workers share the zygote sandbox's empty one,
    and its filter refuses every keyring call). private_tmp: a tmpfs of its own
    on /tmp (else the zygote sandbox's, or the host's, is shared). fs_rules: the
    Landlock file rules to enter with the scopes (the zygote's workers: the
    zygote's sandbox view; a fork of the supervisor: none, it sees the host).
    landlock_abi: the kernel's, probed once by the parent (0: no Landlock).
    """

    own_keyring: bool
    private_tmp: bool
    fs_rules: tuple[tuple[bytes, int], ...]
    landlock_abi: int


PRIVATE_TMP_BYTES = 64 << 20
# The zygote sandbox's view, for its workers' own Landlock domains: everything
# bound in is read and executed, /tmp is the worker's own, /proc and /dev files
# may be read and written (what the sandbox's own rules give a workload).
ZYGOTE_FS_RULES: tuple[tuple[bytes, int], ...] = (
    (b"/", landlock.READ),
    (b"/tmp", landlock.FULL),
    (b"/proc", landlock.READ_FILE | landlock.READ_DIR | landlock.WRITE_FILE),
    (b"/dev", landlock.READ_FILE | landlock.READ_DIR | landlock.WRITE_FILE),
)
_abi: int | None = None


def landlock_abi() -> int:
    """The kernel's Landlock ABI, probed once (in the parent, before any fork)."""
    global _abi
    if _abi is None:
        _abi = landlock.abi_version()
    return _abi


def fork_isolation(shared_tmp: bool = False) -> Isolation:
    """A fork of the supervisor's: own keyring, own /tmp unless shared, Landlock scopes
    without file rules (it sees the host's filesystem)."""
    return Isolation(own_keyring=True, private_tmp=not shared_tmp, fs_rules=(),
                     landlock_abi=landlock_abi())


def _isolate(how: Isolation, ids: tuple[int, int]) -> None:
    """Child, pid 1 of its new namespaces, still holding their capabilities: its ids
    (`ids`, its own before the clone, as INNER_ID), its own view of /proc and /tmp,
    its own keyring, then its own Landlock domain (last: Landlock refuses mounts to a
    process whose domain handles the filesystem)."""
    self_confine.map_own_ids(*ids)
    if how.own_keyring:
        self_confine.join_new_session_keyring()
    try:
        self_confine.mount_own_proc()
    except PermissionError:
        # The kernel refuses a new procfs while the one we see is partly covered
        # (a container runtime's masked /proc paths): then no /proc at all.
        self_confine.hide_proc()
    # Its uid is mapped now, and /proc/keys lists every key of a mapped uid.
    self_confine.mask_proc_keys()
    if how.private_tmp:
        self_confine.mount_private_tmp(PRIVATE_TMP_BYTES,
                                       self_confine.paths_below_tmp(sys.path))
    self_confine.scope_landlock(how.landlock_abi, how.fs_rules)


def _child(channel_fd: int, parent_pidfd: int, how: Isolation, ids: tuple[int, int],
           warm: bool = False) -> NoReturn:
    """The worker, from the fork to serving. With `warm`, `channel_fd` is a socket on
    which the zygote will hand over the real channel once the worker is assigned."""
    code = EXIT_SETUP
    # Where a failure can be told to the supervisor: the channel (not a warm worker's
    # socket to the zygote), until run() takes over reporting its own.
    report_fd = -1 if warm else channel_fd
    try:
        gc.disable()  # objects inherited from the parent must never be finalized here
        faulthandler.disable()  # an inherited crash handler would outlive the parent's intent
        os.setsid()
        self_confine.set_parent_death_signal(signal.SIGKILL)
        if wait_readable([parent_pidfd], 0):
            os._exit(EXIT_SETUP)  # the parent died before PDEATHSIG was armed
        # This process is its PID namespace's init: when it dies the kernel kills
        # every process it ever forked. So it must die with its parent, whatever its
        # code does: PR_SET_PDEATHSIG answers EPERM from here on (a filter of its own,
        # loaded with the CAP_SYS_ADMIN the new user namespace gave it).
        self_confine.lock_parent_death_signal()
        # /proc/1/cmdline and environ in here are this process's: the parent's strings.
        self_confine.hide_parent_argv(b"warden-worker")
        # And os.environ is the parent's too (a fork copies it): a worker gets the
        # environment every sandbox gets, never the supervisor's (its secrets).
        _clean_environment()
        _isolate(how, ids)
        if channel_fd != 3:
            os.dup2(channel_fd, 3)
        self_confine.close_fds(0, 2)
        devnull = os.open("/dev/null", os.O_RDWR)  # 0, 1, 2 point nowhere
        for fd in (1, 2):
            if devnull != fd:
                os.dup2(devnull, fd)
        self_confine.close_fds(4)
        os.set_inheritable(3, False)
        report_fd = -1 if warm else 3
        # The new user namespace gave us every capability in it: clear them all.
        # (The bounding set is left as is: with no_new_privs, set before the
        # filter, and an unmapped uid, no exec can raise capabilities again.)
        self_confine.clear_capabilities()
        from warden.supervisor import worker_main
        if warm:
            worker_main.warm_up()
            if not _receive_channel():
                os._exit(0)  # retired unassigned by the zygote
        report_fd = -1  # run() reports its own start failures
        code = worker_main.run(3)
    except BaseException as e:
        if report_fd >= 0:
            from warden.supervisor import worker_main
            worker_main.report_start_failure(report_fd, e)
        code = EXIT_SETUP
    os._exit(code)


def _clean_environment() -> None:
    """The environment of a sandbox's program (spec.py), nothing of the parent's."""
    lang = os.environ.get("LANG", "C.UTF-8")
    os.environ.clear()
    os.environ.update({"PATH": BASE_PATH, "HOME": "/tmp", "LANG": lang,
                       "WARDEN_CHANNEL_FD": "3"})


def _receive_channel() -> bool:
    """Wait on fd 3 (the zygote's socket) for the worker's channel; put it at fd 3."""
    sock = socket.socket(fileno=os.dup(3))
    try:
        _msg, fds = recv_with_fds(sock, 16, 1)
    finally:
        sock.close()
    if len(fds) != 1:
        close_all(fds)
        return False
    os.dup2(fds[0], 3)  # replaces (and so closes) the zygote's socket
    os.close(fds[0])
    os.set_inheritable(3, False)
    return True


def fork_warm(parent_pidfd: int, how: Isolation) -> tuple[int, socket.socket]:
    """A worker confined and warmed up ahead of demand, waiting for its channel.

    Returns its pid and the socket on which to send the channel (one fd,
    SCM_RIGHTS); closing that socket instead retires it. Only for a
    single-threaded caller (the zygote).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    ids = (os.geteuid(), os.getegid())  # read here: after the clone they are unmapped
    try:
        pid = self_confine.fork_into_new_namespaces()
    except OSError as e:
        ours.close()
        theirs.close()
        raise ConfineError(e.errno, f"clone into new user+pid namespaces: {e.strerror}") \
            from None
    if pid == 0:
        _child(theirs.fileno(), parent_pidfd, how, ids, warm=True)
    theirs.close()
    return pid, ours


def outer_ids() -> tuple[int, int] | None:
    """As root: the unprivileged ids forked workers run as; else None (they keep ours).

    From the one validated source every start method uses (ids.py): a bad
    WARDEN_OUTER_UID/GID (0, the supervisor's own, not a number, or fixed ids an
    ordinary user cannot take) raises ids.OuterIdError, a ValueError naming it."""
    from warden.supervisor.sandbox import ids

    worker_ids = ids.forked_worker_ids(os.environ, shared=DEFAULT_OUTER_ID)
    return worker_ids if os.geteuid() == 0 else None


def fork_worker(channel_fd: int, parent_pidfd: int, as_ids: tuple[int, int] | None = None,
                how: Isolation | None = None) -> int:
    """Start a confined worker serving on `channel_fd`; returns its pid in our namespace.

    The caller keeps ownership of `channel_fd` (close it after this returns).
    `parent_pidfd` is a pidfd of the process whose death must kill the worker
    (the caller itself): the worker checks it right after arming PDEATHSIG.
    `as_ids` (uid, gid): become this unprivileged id before entering the new
    user namespace, so the kernel's own checks keep the worker away from
    root's files and processes (needed when the caller is root).
    `how`: the worker's own isolation; by default a fork of the supervisor's
    (own keyring and /tmp, Landlock scopes without file rules).
    """
    if how is None:
        how = fork_isolation()
    if as_ids is None and single_threaded():
        ids = (os.geteuid(), os.getegid())  # read here: after the clone they are unmapped
        try:
            pid = self_confine.fork_into_new_namespaces()
        except OSError as e:
            raise ConfineError(e.errno, f"clone into new user+pid namespaces: {e.strerror}") \
                from None
        if pid == 0:
            _child(channel_fd, parent_pidfd, how, ids)
        return pid
    # Threads may run here, or ids must change first: fork (CPython's fork
    # handles the locks), change ids, then the raw clone from that
    # single-threaded copy, as our own child (CLONE_PARENT).
    r, w = os.pipe2(os.O_CLOEXEC)
    a = os.fork()
    if a == 0:
        try:
            os.close(r)
            ids = as_ids if as_ids is not None else (os.geteuid(), os.getegid())
            if as_ids is not None:
                os.setgroups([])
                os.setresgid(as_ids[1], as_ids[1], as_ids[1])
                os.setresuid(as_ids[0], as_ids[0], as_ids[0])
            pid = self_confine.fork_into_new_namespaces(as_sibling=True)
            if pid == 0:
                os.close(w)
                _child(channel_fd, parent_pidfd, how, ids)
            os.write(w, _PID.pack(pid))
        except BaseException:
            os._exit(EXIT_SETUP)
        os._exit(0)
    os.close(w)
    try:
        data = os.read(r, _PID.size)
    finally:
        os.close(r)
        os.waitpid(a, 0)
    if len(data) != _PID.size:
        raise ConfineError(11, "clone into new user+pid namespaces failed")
    return int(_PID.unpack(data)[0])
