"""Child side: the sandbox's init (B) and its workload (C), from the clone to exec.

Who runs this: the process the parent (or its short-lived fork A, or a
zygote) cloned into the new namespaces, with the parent's memory as a
copy-on-write copy. `child_setup` states the setup order, once: its body is
the order, each line one step, one call into the step's mechanism (nsjail's
containProc is the model), and docs/sandbox.md ("Setup order") lists it.

What code here may do, after the clone:
- No threads, no locks, nothing that takes or allocates one (no logging, no
  imports, no asyncio, no msgspec): the clone copied only the calling thread,
  and a lock another thread held is held forever here. What runs is plain
  Python and ctypes calls on values the parent prepared (the Plan); the
  garbage collector is off, so no finalizer of the parent's objects runs.
- Never raise to the caller, never return: every step either works or ends
  this process with EXIT_SETUP after sending a protocol.Failed record (step,
  errno, message) on the close-on-exec setup socket; the parent reads it and
  reports setup_error naming the step. The socket reaches end-of-file
  exactly when the workload has exec'ed.
- Nothing here trusts or needs more than the Plan: the parent decided
  everything before the clone (and checked the profile, compiled the filter).

Each mechanism module has the same two halves: `parent_*` functions run in
the parent, outside the sandbox, before the clone (preparing plain values for
the Plan) or after it (acting on the child's pid); `child_*` functions run
here, inside, on plain values (never the spec or the Plan).

Process shape:

    supervisor (parent)
      ├─ A   only when the supervisor has other threads: os.fork(), so libc
      │      and CPython are consistent; it clones B with CLONE_PARENT (B is
      │      the supervisor's own child), sends B's pid, and exits. A
      │      single-threaded supervisor clones B itself.
      └─ B   pid 1 of a new user+pid+mount+ipc+uts(+net) namespace set, later
             also cgroup (as root, cloned with the sandbox's own outer ids as
             effective ids, so they own its user namespace); runs child_setup,
             forks C, hands the seccomp listener to the parent, then reaps as
             init (pidns)
           └─ C  the workload: _workload, then exec

The parent writes B's id maps and moves B into its cgroup while B builds the
new root. C shares B's descriptor table until its exec (CLONE_FILES, with
CLONE_VFORK so B sleeps meanwhile), so the seccomp listener C creates right
before exec stays in B's table, and B sends it to the parent.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import signal
import socket
import struct
from collections.abc import Callable
from typing import NoReturn, TypeVar

from warden.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP
from warden.supervisor.sandbox import (
    _sys,
    caps,
    fds,
    ids,
    keyring,
    landlock,
    limits,
    mounts,
    net,
    pidns,
    proctitle,
    seccomp,
    userns,
)
from warden.supervisor.sandbox.lowlevel import is_seccomp_listener
from warden.supervisor.sandbox.plan import Plan
from warden.supervisor.sandbox.protocol import (
    CgroupJoined,
    Failed,
    InitPid,
    ListenerFd,
    MapsWritten,
    Message,
    ReadyForMaps,
    SetupStep,
    decode,
    encode,
)
from warden.supervisor.sandbox.userns import INNER_ID

S = SetupStep
T = TypeVar("T")


def child_setup(plan: Plan, sock_fd: int, status_fd: int) -> NoReturn:
    """B: the sandbox's pid 1, from the clone to forking the workload, then init."""
    gc.disable()  # a collection would touch every object, copying every page it shares
    step = _Steps(sock_fd)
    step(S.PROCTITLE, proctitle.child_title, b"warden-init")
    step(S.DUMPABLE, pidns.child_dumpable, True)  # until the parent has written the maps
    step(S.SESSION, pidns.child_session)
    step(S.PDEATHSIG, pidns.child_parent_death_signal, plan.parent_pidfd)
    step(S.CLOSE_FDS, fds.child_close_all_but, _inherited(plan, sock_fd, status_fd))
    if plan.self_maps:
        step(S.USERNS, userns.child_maps, *plan.map_ids)
    else:
        step(S.AWAIT_MAPS, _await_maps, sock_fd, plan.map_helper)
    held = step(S.USERNS_LIMITS, userns.child_limits, plan.userns_limits)
    # The sandbox's id now: files in the new root must be created by an id the
    # namespace maps. Inner 0 is unmapped, so the namespace's capabilities
    # survive this until the caps steps drop them.
    step(S.IDS, caps.child_set_ids, INNER_ID, INNER_ID, plan.drop_groups)
    step(S.PDEATHSIG_AGAIN, pidns.child_parent_death_signal, plan.parent_pidfd, last=True)
    # After the ids: the keyring is owned by (and charged to) the sandbox's own id, never
    # a filesystem uid the clone was made with.
    step(S.KEYRING, keyring.child_join_session_keyring)  # else the caller's keys stay possessed
    step(S.MOUNT, mounts.child_root, plan.mount_ops, plan.tmp_size, plan.chdir,
         plan.shm_size)
    step(S.USERNS_MOUNT_LIMIT, userns.child_mount_limit, held)
    if plan.mask_proc_keys:  # it lists the keys of the uid the sandbox maps
        step(S.PROC_KEYS, keyring.child_mask_proc_keys)
    step(S.UTS, net.child_hostname, plan.hostname)
    if not plan.share_net:
        step(S.NET, net.child_loopback)
    step(S.RLIMITS, limits.child_rlimits, plan.early_rlimits)
    # The fd map is built in init's own table, which the workload then shares
    # (CLONE_FILES) until its exec gives it a private copy without the
    # close-on-exec descriptors; the setup socket and status pipe move above it.
    sock_fd, status_fd = step(S.FDS, fds.child_install, plan.fd_pairs, (sock_fd, status_fd))
    step.sock_fd = sock_fd
    ruleset_fd = -1
    if plan.landlock_abi:
        # After the fd map: each handed-over regular file gets a rule of its own.
        ruleset_fd = step(S.LANDLOCK_RULESET, landlock.child_ruleset, plan.landlock_abi,
                          plan.landlock_rules, fds=tuple(t for t, _s in plan.fd_pairs))
    listener_fd = step(S.LISTENER_SLOT, fds.child_lowest_free)
    execute = step(S.EXEC, _prepare_exec, plan.argv, plan.envp, plan.search_path)
    filt = step(S.SECCOMP_PREPARE, seccomp.child_prepare, plan.seccomp_filter, plan.notify)
    guard = (step(S.SECCOMP_GUARD_PREPARE, seccomp.child_prepare, plan.guard_filter, False)
             if plan.guard_filter else None)
    # Only now wait for the parent to have moved this process into its cgroup:
    # moving waits for an RCU grace period, which the work above overlaps. The
    # workload, forked below, is born in the cgroup.
    step(S.AWAIT_CGROUP, _await, sock_fd, CgroupJoined)
    step(S.CGROUPNS, limits.child_cgroup_namespace)
    step(S.NOT_DUMPABLE, pidns.child_dumpable, False)
    # Init and workload alike: no capability in any set, securebits locked.
    step(S.CAPS, caps.child_drop_bounding_set, plan.last_cap)
    step(S.SECUREBITS, caps.child_lock_securebits)
    step(S.CLEAR_CAPS, caps.child_clear_capabilities)
    step(S.NO_NEW_PRIVS, caps.child_no_new_privs)
    step(S.RESET_SIGNALS, pidns.child_reset_signals)
    step(S.BLOCK_SIGNALS, pidns.child_block_signals)  # no SIGCHLD lost before the wait loop
    pid = step(S.PIDNS, pidns.child_fork_workload)
    if pid == 0:
        _workload(plan, step, execute, filt, guard, ruleset_fd)
    # The workload has exec'ed, or died during its setup (having said why on
    # sock_fd, which the parent reads first). Either way init now waits for it
    # like for any end; only the listener needs handing over.
    if plan.notify:
        step(S.LISTENER, _hand_over_listener, sock_fd, listener_fd)
    step(S.CLOSE_FDS_INIT, fds.child_close_all_but, {status_fd})
    pidns.child_run_init(pid, status_fd)
    os._exit(0)


def _workload(plan: Plan, step: _Steps, execute: _sys.PreparedExec,
              filt: seccomp.PreparedFilter, guard: seccomp.PreparedFilter | None,
              ruleset_fd: int) -> NoReturn:
    """C: what only the workload may carry, from its signal mask to exec.

    Everything both init and the workload must have (rlimits, fd map,
    capabilities, no_new_privs) init already did before forking: less to do
    in a freshly forked process, where every first write copies a page."""
    step(S.SIGNALS, pidns.child_workload_signals)
    step(S.PROCESS_GROUP, pidns.child_own_process_group)
    if ruleset_fd >= 0:
        step(S.LANDLOCK, landlock.child_restrict, ruleset_fd)
    step(S.LATE_RLIMITS, limits.child_rlimits, plan.late_rlimits)
    if guard is not None:  # first: the profile's filter, loaded after it, owns the listener
        step(S.SECCOMP_GUARD, seccomp.child_load, guard)
    step(S.SECCOMP, seccomp.child_load, filt)
    err = execute()
    os._exit(EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_NOT_EXECUTABLE)


class _Steps:
    """Runs one setup step; a step that raises is reported as Failed and ends the process."""

    __slots__ = ("sock_fd",)

    def __init__(self, sock_fd: int) -> None:
        self.sock_fd = sock_fd

    def __call__(self, which: SetupStep, fn: Callable[..., T], *args: object,
                 **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            fail(self.sock_fd, which, e)


def report(sock_fd: int, step: SetupStep, err: int, message: str = "") -> None:
    """Send a Failed record (best effort: the parent may be gone)."""
    with contextlib.suppress(OSError):
        os.write(sock_fd, encode(Failed(step, err, message)))


def fail(sock_fd: int, step: SetupStep, e: BaseException) -> NoReturn:
    err = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    report(sock_fd, step, err, text)
    os._exit(EXIT_SETUP)


def _inherited(plan: Plan, sock_fd: int, status_fd: int) -> set[int]:
    """The parent's descriptors this sandbox needs; the init closes every other."""
    return {sock_fd, status_fd, plan.parent_pidfd, *(src for _t, src in plan.fd_pairs),
            *mounts.tree_fds(plan.mount_ops)}


def _await(sock_fd: int, expected: type[Message]) -> None:
    """The parent's next message, which must be `expected`. Anything else (end of
    file included: the parent gave up, and reports why itself) ends this process."""
    try:
        msg = decode(os.read(sock_fd, 16))
    except ValueError:
        os._exit(EXIT_SETUP)
    if not isinstance(msg, expected):
        os._exit(EXIT_SETUP)


def _await_maps(sock_fd: int, helper: bool) -> None:
    """The parent writes this process's id maps (root: itself, subordinate ids:
    newuidmap, which may act on this process now that it is dumpable)."""
    if helper:
        os.write(sock_fd, encode(ReadyForMaps()))
    _await(sock_fd, MapsWritten)


def _prepare_exec(argv: tuple[bytes, ...], envp: tuple[bytes, ...],
                  search_path: tuple[bytes, ...]) -> _sys.PreparedExec:
    """execvp's search, done before seccomp so ENOENT/EACCES are setup errors, and
    the exec's arguments built, so that exec is one call in the workload."""
    prog = argv[0]
    candidates = [prog] if b"/" in prog else [d + b"/" + prog for d in search_path]
    found_noexec = False
    for c in candidates:
        if os.path.isfile(c):
            if os.access(c, os.X_OK):
                return _sys.PreparedExec(c, list(argv), list(envp))
            found_noexec = True
    raise OSError(errno.EACCES if found_noexec else errno.ENOENT,
                  f"{prog.decode(errors='replace')}: "
                  f"{'not executable' if found_noexec else 'not found in the sandbox'}")


def _hand_over_listener(sock_fd: int, fd: int) -> None:
    """Send the workload's seccomp listener (left in init's table) to the parent.

    Absent when the workload died before loading its filter: then it never
    ran anything of its own, and its error is already on its way."""
    if not is_seccomp_listener(fd):
        return
    sock = socket.socket(fileno=sock_fd)
    try:
        sock.sendmsg([encode(ListenerFd())],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    finally:
        sock.detach()
    os.close(fd)


# ---------------------------------------------------------------- the cloner
# The parent itself, or its fork A (a copy of a threaded process: the rules above
# hold there too), or a zygote.

def clone_init(plan: Plan, extra_flags: int = 0, into_cgroup: int = -1) -> int:
    """clone(2) the sandbox's init: 0 in the init, its pid here.

    As root, with the sandbox's outer ids as the effective ids for the call,
    so that the new user namespace is owned by them (see ids.parent_assume_owner).
    `into_cgroup` (a cgroup v2 directory's fd): clone3 with CLONE_INTO_CGROUP, so
    the init is born in its cgroup; OSError if this kernel or cgroup refuses that
    (the caller then clones without it and moves the init)."""
    def clone() -> int:
        if into_cgroup < 0:
            return _sys.clone(plan.clone_flags | extra_flags)
        return _sys.clone3_into_cgroup(plan.clone_flags | extra_flags, into_cgroup)

    if plan.clone_as is None:
        return clone()
    # No Python signal handler may run while this process has the sandbox's ids
    # (it would act with them): signals wait until the ids are back.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    pid = -1
    try:
        try:
            saved = ids.parent_assume_owner(*plan.clone_as)
        except OSError:
            # EINVAL: the ids are not mapped in this user namespace (warden run as the
            # root of one). Then nothing can map them either: the userns step says so.
            pid = clone()
            return pid
        try:
            if into_cgroup >= 0:
                # The kernel checks the right to write the cgroup's procs file (and
                # its parent's) with the filesystem uid, which followed the effective
                # one; the namespace's owner is the effective uid. So root's
                # filesystem uid for the call: the init is born with it and keeps it
                # only until its ids step, running nothing but its own setup.
                _sys.setfsuid(0)
            pid = clone()
        finally:
            if pid != 0:  # not in the init: its ids are the new namespace's business
                ids.parent_resume(saved)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # in the init too: as it was
    return pid


def _stage_a(plan: Plan, sock_fd: int, status_fd: int) -> NoReturn:
    """A: clone B into its namespaces as the parent's own child, then exit."""
    try:
        pid = clone_init(plan, _sys.CLONE_PARENT)
    except OSError as e:
        report(sock_fd, S.CLONE, e.errno or errno.EPERM, str(e))
        os._exit(EXIT_SETUP)
    if pid == 0:
        child_setup(plan, sock_fd, status_fd)
    announce_init(sock_fd, pid)
    os._exit(0)


def announce_init(child_sock: int, pid: int) -> None:
    """From the process that cloned the init (not the supervisor): tell the supervisor its pid."""
    os.write(child_sock, encode(InitPid(pid)))
