"""Child side: the sandbox's init (B) and the workload (C), from the clone to exec.

Process shape:

    supervisor (parent)
      ├─ A   only when the supervisor has other threads: os.fork(), so libc
      │      and CPython are consistent; it clones B with CLONE_PARENT (B is
      │      the supervisor's own child), sends B's pid, and exits. A
      │      single-threaded supervisor clones B itself.
      └─ B   pid 1 of a new user+pid+mount+ipc+uts(+net) namespace set, later
             also cgroup (as root, cloned with the sandbox's own outer ids as
             effective ids, so they own its user namespace): session,
             parent-death signal, the namespace's limits, ids, new root,
             hostname, loopback, rlimits, fd map, Landlock ruleset, cgroup
             namespace, capabilities to zero, no_new_privs; forks C; hands the
             seccomp listener to the parent; then reaps as init (pidns)
           └─ C  the workload: signal mask, own process group, Landlock,
                 RLIMIT_AS/NOFILE, seccomp, exec

The parent writes B's id maps and moves B into its cgroup while B builds the
new root. C shares B's descriptor table until its exec (CLONE_FILES, with
CLONE_VFORK so B sleeps meanwhile), so the seccomp listener C creates right
before exec stays in B's table, and B sends it to the parent. Every setup
step in B or C that fails is sent to the parent as (step, errno, message)
over a close-on-exec socket, which reaches end-of-file exactly when C has
exec'ed; the parent then reports `setup_error` naming the step.

`child_setup(plan, ...)` takes only a prepared Plan; the parent's side is in
launch.py, the running handle in handle.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import os
import signal
import socket
import struct
from typing import NoReturn

from warden.supervisor.sandbox import (
    _sys,
    caps,
    fds,
    ids,
    landlock,
    limits,
    mounts,
    net,
    pidns,
    userns,
)
from warden.supervisor.sandbox.keyring import child_join_session_keyring, child_mask_proc_keys
from warden.supervisor.sandbox.lowlevel import wait_readable
from warden.supervisor.sandbox.plan import Plan
from warden.supervisor.sandbox.proctitle import child_hide_parent_argv
from warden.supervisor.sandbox.seccomp import PreparedFilter
from warden.supervisor.sandbox.spec import INNER_ID
from warden.supervisor.sandbox.status import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP

STEPS = ("clone", "session", "pdeathsig", "userns", "pidns", "mount", "uts", "net", "cgroup",
         "cgroupns", "signals", "rlimits", "fds", "caps", "ids", "no_new_privs", "landlock",
         "exec", "seccomp", "supervisor", "keyring")
_ERR = struct.Struct("=Bi")
_PID = struct.Struct("=i")


def _report(sock_fd: int, step: str, err: int, message: str = "") -> None:
    with contextlib.suppress(OSError):
        os.write(sock_fd, b"E" + _ERR.pack(STEPS.index(step), err) + message.encode()[:300])


def _fail(sock_fd: int, step: str, e: BaseException) -> NoReturn:
    err = e.errno if isinstance(e, OSError) and e.errno else errno.EIO
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    _report(sock_fd, step, err, text)
    os._exit(EXIT_SETUP)


def _resolve(plan: Plan) -> bytes:
    """execvp's search, done before seccomp so ENOENT/EACCES are setup errors."""
    prog = plan.argv[0]
    candidates = [prog] if b"/" in prog else [d + b"/" + prog for d in plan.search_path]
    found_noexec = False
    for c in candidates:
        if os.path.isfile(c):
            if os.access(c, os.X_OK):
                return c
            found_noexec = True
    raise OSError(errno.EACCES if found_noexec else errno.ENOENT,
                  f"{prog.decode(errors='replace')}: "
                  f"{'not executable' if found_noexec else 'not found in the sandbox'}")


def _workload(plan: Plan, sock_fd: int, execute: _sys.PreparedExec,
              filt: PreparedFilter, ruleset_fd: int) -> NoReturn:
    """C: what only the workload may carry, from its signal mask to exec.

    Everything both init and the workload must have (rlimits, fd map,
    capabilities, no_new_privs) init already did before forking: less to do
    in a freshly forked process, where every first write copies a page."""
    step = "signals"
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # Its own process group: kill(0, ...) from the workload reaches only itself
        # and its children, not the init.
        os.setpgid(0, 0)
        step = "landlock"
        if ruleset_fd >= 0:
            landlock.child_restrict(ruleset_fd)
        step = "rlimits"
        limits.child_rlimits(plan.late_rlimits)
        step = "seccomp"
        filt.load()
    except BaseException as e:
        _fail(sock_fd, step, e)
    err = execute()
    os._exit(EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_NOT_EXECUTABLE)


def _parent_death_signal(parent_pidfd: int) -> None:
    """SIGKILL when the parent dies, with the race closed: if the parent died
    before prctl, nobody would ever send it, so its pidfd is checked after."""
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    if wait_readable([parent_pidfd], 0):
        os._exit(EXIT_SETUP)


def child_setup(plan: Plan, sock_fd: int, status_fd: int) -> NoReturn:
    """B: the sandbox's pid 1, from the session to forking the workload, then init."""
    # A collection would touch every object and copy every page the parent shares.
    gc.disable()
    _set_name(b"warden-init")
    child_hide_parent_argv(b"warden-init")  # /proc/1/cmdline showed the caller's argv
    step = "session"
    try:
        # A supervisor that made itself non-dumpable passed that on; until the
        # workload exists, let the parent write this process's /proc id maps.
        _sys.prctl(_sys.PR_SET_DUMPABLE, 1)
        os.setsid()
        step = "pdeathsig"
        _parent_death_signal(plan.parent_pidfd)
        # Hold none of the parent's descriptors but those this sandbox needs.
        _close_all_but({sock_fd, status_fd, plan.parent_pidfd,
                        *(src for _t, src in plan.fd_pairs), *mounts.tree_fds(plan.mount_ops)})
        step = "keyring"  # else the caller's session keyring (its keys) stays possessed
        child_join_session_keyring()
        step = "userns"
        if plan.self_maps:
            userns.child_maps(*plan.map_ids)
        else:
            if plan.map_helper:
                os.write(sock_fd, b"U")  # dumpable now: newuidmap may act on this process
            if os.read(sock_fd, 16) != b"G":
                os._exit(EXIT_SETUP)
        held_limit = userns.child_limits(plan.userns_limits)
        # Become the sandbox's id now: files in the new root must be created by
        # an id the namespace maps. Inner 0 is unmapped, so the namespace's
        # capabilities survive this until the caps step drops them.
        step = "ids"
        caps.child_set_ids(INNER_ID, INNER_ID, drop_groups=plan.drop_groups)
        # Changing the effective ids cleared the parent-death signal: set it again.
        step = "pdeathsig"
        _parent_death_signal(plan.parent_pidfd)
        os.close(plan.parent_pidfd)
        step = "mount"
        mounts.child_root(plan.mount_ops, plan.tmp_size, plan.chdir)
        step = "userns"
        userns.child_mount_limit(held_limit)
        step = "keyring"
        if plan.mask_proc_keys:
            child_mask_proc_keys()  # it lists the keys of the uid the sandbox maps
        step = "uts"
        net.child_hostname(plan.hostname)
        step = "net"
        if not plan.share_net:
            net.child_loopback()
        step = "rlimits"
        limits.child_rlimits(plan.early_rlimits)
        step = "fds"
        # The fd map is built in init's own table, which the workload then
        # shares (CLONE_FILES) until its exec gives it a private copy without
        # the close-on-exec descriptors. So the seccomp listener the workload
        # creates stays in init's table after the exec; init hands it to the parent.
        sock_fd, status_fd = fds.child_install(plan.fd_pairs, (sock_fd, status_fd))
        step = "landlock"
        ruleset_fd = (landlock.child_ruleset(plan.landlock_abi, plan.landlock_rules)
                      if plan.landlock_abi else -1)
        listener_fd = _lowest_free_fd()
        step = "exec"
        execute = _sys.PreparedExec(_resolve(plan), list(plan.argv), list(plan.envp))
        filt = PreparedFilter(plan.seccomp_filter, plan.notify)
        # Only now wait for the parent to have moved this process into its
        # cgroup: moving waits for an RCU grace period, which the work above
        # overlaps. The workload, forked below, is born in the cgroup.
        step = "cgroup"
        if os.read(sock_fd, 16) != b"C":
            os._exit(EXIT_SETUP)
        step = "cgroupns"
        _sys.unshare(_sys.CLONE_NEWCGROUP)
        # Nothing in the sandbox may read this process's memory: it is a copy
        # of the parent's. (The workload's exec makes the workload dumpable again.)
        _sys.prctl(_sys.PR_SET_DUMPABLE, 0)
        step = "caps"
        # init and workload alike: no capability in any set, securebits locked.
        caps.child_drop_bounding_set(plan.last_cap)
        caps.child_lock_securebits()
        caps.child_clear_capabilities()
        step = "no_new_privs"
        caps.child_no_new_privs()
        step = "signals"
        pidns.child_reset_signals()
        pidns.child_block_signals()
        step = "pidns"
        # CLONE_VFORK: init sleeps until the workload has exec'ed (or died), so
        # nothing touches the shared table meanwhile.
        pid = _sys.clone(_sys.CLONE_FILES | _sys.CLONE_VFORK | signal.SIGCHLD)
        if pid == 0:
            _workload(plan, sock_fd, execute, filt, ruleset_fd)
        # The workload has exec'ed, or died during its setup (having said why on
        # sock_fd, which the parent reads first). Either way init now waits for
        # it like for any end; only the listener needs handing over.
        if plan.notify:
            _hand_over_listener(sock_fd, listener_fd)
        _close_all_but({status_fd})
    except BaseException as e:
        _fail(sock_fd, step, e)
    pidns.child_run_init(pid, status_fd)
    os._exit(0)


def _set_name(name: bytes) -> None:
    """What ps shows for the init (it would otherwise look like the supervisor)."""
    buf = ctypes.create_string_buffer(name[:15])
    with contextlib.suppress(OSError):
        _sys.prctl(_sys.PR_SET_NAME, ctypes.addressof(buf))


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


def _hand_over_listener(sock_fd: int, fd: int) -> None:
    """Send the workload's seccomp listener (left in init's table) to the parent.

    Absent when the workload died before loading its filter: then it never
    ran anything of its own, and its error is already on its way."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    if "seccomp" in link:
        sock = socket.socket(fileno=sock_fd)
        try:
            sock.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        finally:
            sock.detach()
        os.close(fd)


def _close_all_but(keep: set[int]) -> None:
    prev = -1
    for fd in sorted(keep):
        _sys.close_range(prev + 1, fd - 1)
        prev = fd
    _sys.close_range(prev + 1, 0xFFFFFFFF)


def clone_init(plan: Plan, extra_flags: int = 0) -> int:
    """clone(2) the sandbox's init: 0 in the init, its pid here.

    As root, with the sandbox's outer ids as the effective ids for the call,
    so that the new user namespace is owned by them (see ids.parent_assume_owner)."""
    if plan.clone_as is None:
        return _sys.clone(plan.clone_flags | extra_flags)
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
            pid = _sys.clone(plan.clone_flags | extra_flags)
            return pid
        try:
            pid = _sys.clone(plan.clone_flags | extra_flags)
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
        _report(sock_fd, "clone", e.errno or errno.EPERM, str(e))
        os._exit(EXIT_SETUP)
    if pid == 0:
        child_setup(plan, sock_fd, status_fd)
    announce_init(sock_fd, pid)
    os._exit(0)


def announce_init(child_sock: int, pid: int) -> None:
    """From the process that cloned the init (not the supervisor): tell the supervisor its pid."""
    os.write(child_sock, b"P" + _PID.pack(pid))
