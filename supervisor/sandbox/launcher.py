"""Starting a sandbox: the parent's preparation, the child's fixed setup order, the handle.

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

`child_setup(plan, ...)` is the child side and takes only a prepared Plan;
`prepare()` and `Launch.complete()` are the parent's side, split around the
clone so that a zygote can do the clone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import math
import os
import resource
import select
import signal
import socket
import struct
import time
from types import TracebackType
from typing import Any, NamedTuple, NoReturn

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
from warden.supervisor.sandbox.keyring import join_new_session_keyring, mask_proc_keys
from warden.supervisor.sandbox.notify import WEAKENED_NO_WITNESS, Listener
from warden.supervisor.sandbox.preflight import PreflightError, explain
from warden.supervisor.sandbox.proctitle import hide_parent_argv
from warden.supervisor.sandbox.seccomp import (
    WEAKENED_WAIT_KILLABLE,
    PreparedFilter,
    wait_killable_supported,
)
from warden.supervisor.sandbox.spec import INNER_ID, SandboxSpec
from warden.supervisor.sandbox.status import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_SETUP,
    Outcome,
    SetupFailure,
    Status,
    Violation,
)

STEPS = ("clone", "session", "pdeathsig", "userns", "pidns", "mount", "uts", "net", "cgroup",
         "cgroupns", "signals", "rlimits", "fds", "caps", "ids", "no_new_privs", "landlock",
         "exec", "seccomp", "supervisor", "keyring")
_ERR = struct.Struct("=Bi")
_PID = struct.Struct("=i")
SETUP_TIMEOUT = 30.0
_KILLED_EXIT = 128 + signal.SIGKILL


class SandboxError(Exception):
    """Base of errors raised by spawn()."""


class SetupError(SandboxError):
    """The sandbox could not be set up; `.status` is the setup_error record."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.reason)
        self.status = status


class Plan(NamedTuple):
    """Everything the child needs, prepared and encoded by the parent before fork.

    (A NamedTuple rather than a dataclass: as immutable, and cheaper to define
    on `warden run`'s start-up path.)"""

    clone_flags: int
    parent_pidfd: int
    mount_ops: tuple[mounts.MountOp, ...]
    tmp_size: int
    chdir: bytes
    hostname: bytes
    share_net: bool
    early_rlimits: tuple[tuple[int, int, int], ...]
    late_rlimits: tuple[tuple[int, int, int], ...]
    fd_pairs: tuple[tuple[int, int], ...]
    landlock_abi: int
    landlock_rules: tuple[tuple[bytes, int], ...]
    argv: tuple[bytes, ...]
    envp: tuple[bytes, ...]
    search_path: tuple[bytes, ...]
    seccomp_filter: bytes
    notify: bool
    last_cap: int
    drop_groups: bool  # drop the supplementary groups (setgroups is allowed: root, subids)
    map_ids: tuple[int, int]  # outer (uid, gid) that INNER_ID maps to
    self_maps: bool  # the init writes its own maps (ordinary user) instead of the parent
    map_helper: bool  # the parent maps through newuidmap/newgidmap (ordinary user, subids)
    clone_as: tuple[int, int] | None  # root: effective ids that create (own) the user namespace
    userns_limits: tuple[tuple[bytes, bytes], ...]  # /proc/sys/user limits the init lowers
    mask_proc_keys: bool


# ---------------------------------------------------------------- child side

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
            landlock.restrict_self(ruleset_fd)
        step = "rlimits"
        limits.apply_rlimits(plan.late_rlimits)
        step = "seccomp"
        filt.load()
    except BaseException as e:
        _fail(sock_fd, step, e)
    err = execute()
    os._exit(EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_NOT_EXECUTABLE)


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The fds among `fds` that are readable within `timeout` seconds (None: no limit).

    poll, never select: select() raises ValueError for descriptors >= 1024,
    which a supervisor holding hundreds of workers has."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    # Round up, so a wait for 0.4 ms is not a busy poll(0).
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return [fd for fd, _ev in p.poll(ms)]


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
    hide_parent_argv(b"warden-init")  # /proc/1/cmdline showed the caller's argv
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
        join_new_session_keyring()
        step = "userns"
        if plan.self_maps:
            userns.write_maps("self", *plan.map_ids, deny_setgroups=True)
        else:
            if plan.map_helper:
                os.write(sock_fd, b"U")  # dumpable now: newuidmap may act on this process
            if os.read(sock_fd, 16) != b"G":
                os._exit(EXIT_SETUP)
        held_limit = userns.set_limits(plan.userns_limits)
        # Become the sandbox's id now: files in the new root must be created by
        # an id the namespace maps. Inner 0 is unmapped, so the namespace's
        # capabilities survive this until the caps step drops them.
        step = "ids"
        caps.set_ids(INNER_ID, INNER_ID, drop_groups=plan.drop_groups)
        # Changing the effective ids cleared the parent-death signal: set it again.
        step = "pdeathsig"
        _parent_death_signal(plan.parent_pidfd)
        os.close(plan.parent_pidfd)
        step = "mount"
        mounts.setup_root(plan.mount_ops, plan.tmp_size, plan.chdir)
        step = "userns"
        userns.finish_limits(held_limit)
        step = "keyring"
        if plan.mask_proc_keys:
            mask_proc_keys()  # it lists the keys of the uid the sandbox maps
        step = "uts"
        net.set_hostname(plan.hostname)
        step = "net"
        if not plan.share_net:
            net.loopback_up()
        step = "rlimits"
        limits.apply_rlimits(plan.early_rlimits)
        step = "fds"
        # The fd map is built in init's own table, which the workload then
        # shares (CLONE_FILES) until its exec gives it a private copy without
        # the close-on-exec descriptors. So the seccomp listener the workload
        # creates stays in init's table after the exec; init hands it to the parent.
        sock_fd, status_fd = fds.install(plan.fd_pairs, (sock_fd, status_fd))
        step = "landlock"
        ruleset_fd = (landlock.build_ruleset(plan.landlock_abi, plan.landlock_rules)
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
        caps.drop_bounding_set(plan.last_cap)
        caps.lock_securebits()
        caps.clear_capabilities()
        step = "no_new_privs"
        caps.no_new_privs()
        step = "signals"
        pidns.reset_signals()
        pidns.block_signals()
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
    pidns.run_init(pid, status_fd)
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
    so that the new user namespace is owned by them (see ids.assume_owner)."""
    if plan.clone_as is None:
        return _sys.clone(plan.clone_flags | extra_flags)
    # No Python signal handler may run while this process has the sandbox's ids
    # (it would act with them): signals wait until the ids are back.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    pid = -1
    try:
        try:
            saved = ids.assume_owner(*plan.clone_as)
        except OSError:
            # EINVAL: the ids are not mapped in this user namespace (warden run as the
            # root of one). Then nothing can map them either: the userns step says so.
            pid = _sys.clone(plan.clone_flags | extra_flags)
            return pid
        try:
            pid = _sys.clone(plan.clone_flags | extra_flags)
        finally:
            if pid != 0:  # not in the init: its ids are the new namespace's business
                ids.resume(saved)
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


# ---------------------------------------------------------------- parent side

_own_pidfd = -1


def _parent_pidfd() -> int:
    global _own_pidfd
    if _own_pidfd < 0 or _own_pid != os.getpid():
        _set_own_pidfd()
    return _own_pidfd


_own_pid = -1


def _set_own_pidfd() -> None:
    global _own_pidfd, _own_pid
    _own_pidfd = os.pidfd_open(os.getpid())
    os.set_inheritable(_own_pidfd, False)
    _own_pid = os.getpid()


def _landlock_rules(spec: SandboxSpec) -> tuple[tuple[bytes, int], ...]:
    rules: list[tuple[bytes, int]] = [(b"/", landlock.READ_DIR)]
    for b in spec.binds:
        rules.append((os.fsencode(b.dest), landlock.FULL if b.writable else landlock.READ))
    for t in spec.tmpfs:
        rules.append((os.fsencode(t.dest), landlock.FULL))
    rules.append((b"/tmp", landlock.FULL))
    rules.append((b"/proc", landlock.READ_FILE | landlock.READ_DIR | landlock.WRITE_FILE))
    rules.append((b"/dev", landlock.READ_FILE | landlock.READ_DIR | landlock.WRITE_FILE))
    return tuple(rules)


_landlock_abi: int | None = None


def _plan(spec: SandboxSpec, limiter: limits.Limiter, pairs: tuple[tuple[int, int], ...],
          lease: ids.Lease) -> Plan:
    global _landlock_abi
    if _landlock_abi is None:
        _landlock_abi = landlock.abi_version()
    flags = (_sys.CLONE_NEWUSER | _sys.CLONE_NEWPID | _sys.CLONE_NEWNS | _sys.CLONE_NEWIPC
             | _sys.CLONE_NEWUTS | signal.SIGCHLD)
    if not spec.share_net:
        flags |= _sys.CLONE_NEWNET
    rl = limiter.rlimits()
    late_kinds = {resource.RLIMIT_AS, resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE,
                  resource.RLIMIT_MSGQUEUE}
    root = os.geteuid() == 0
    env = dict(spec.env)
    path_dirs = tuple(os.fsencode(d) for d in env.get("PATH", "").split(":") if d)
    plan = Plan(
        clone_flags=flags,
        parent_pidfd=_parent_pidfd(),
        mount_ops=mounts.plan_binds(tuple((b.source, b.dest, b.writable) for b in spec.binds),
                                    tuple((t.dest, limiter.tmpfs_size(t.size_bytes))
                                          for t in spec.tmpfs)),
        tmp_size=limiter.tmpfs_size(spec.tmp_size_bytes),
        chdir=os.fsencode(spec.chdir),
        hostname=spec.hostname.encode(),
        share_net=spec.share_net,
        early_rlimits=tuple(r for r in rl if r[0] not in late_kinds),
        late_rlimits=tuple(r for r in rl if r[0] in late_kinds),
        fd_pairs=pairs,
        landlock_abi=_landlock_abi if spec.landlock else 0,
        landlock_rules=_landlock_rules(spec),
        argv=tuple(os.fsencode(a) for a in spec.argv),
        envp=tuple(os.fsencode(f"{k}={v}") for k, v in spec.env),
        search_path=path_dirs,
        seccomp_filter=spec.seccomp_filter,
        notify=spec.notify,
        last_cap=caps.last_cap(),
        # As root, and after newgidmap (which leaves setgroups allowed), the
        # supplementary groups inherited from the supervisor can and must go.
        drop_groups=root or lease.mode != "own",
        map_ids=(lease.uid, lease.gid),
        self_maps=not root and lease.mode == "own",
        map_helper=not root and lease.mode != "own",
        clone_as=(lease.uid, lease.gid) if root else None,
        userns_limits=userns.plan_limits(spec.userns_limits),
        mask_proc_keys=spec.mask_proc_keys,
    )
    # Last, so that nothing after it can fail and leak the detached trees.
    return plan._replace(mount_ops=mounts.detach_sources(plan.mount_ops))


class _Setup:
    """The parent's side of one child's setup conversation."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def recv(self) -> tuple[bytes, list[int]]:
        """Next message and any fds that came with it; (b"", []) at end-of-file."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0 or not wait_readable([self.sock.fileno()], left):
                raise TimeoutError("sandbox setup did not finish in time")
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(512, socket.CMSG_SPACE(4 * 4))
                break
            except ConnectionResetError:
                # The child side closed with a message of ours unread (it failed
                # before reading "C"). Reading the error clears it; what the
                # child sent before closing is still queued behind it.
                continue
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4]))
        return data, fds


def _setup_failure(data: bytes) -> SetupFailure:
    idx, err = _ERR.unpack_from(data, 1)
    step = STEPS[idx] if idx < len(STEPS) else f"step{idx}"
    msg = data[1 + _ERR.size:].decode(errors="replace")
    return SetupFailure(step, err, msg or os.strerror(err))


class Launch:
    """One sandbox start, prepared: the child's plan and the parent's end of its setup.

    `prepare(spec)` makes it. Some process then clones the sandbox's init into
    its namespaces and runs `child_setup(launch.plan, launch.child_sock,
    launch.child_status)` there: `spawn()` does it itself (or through a
    short-lived fork that clones with CLONE_PARENT); a zygote that holds the
    descriptors of `launch.child_fds()` can do it too, with CLONE_PARENT so the
    init is still the supervisor's child. After the clone,
    `release_child_fds()` drops the parent's copies and `complete()` runs the
    parent's side of the setup and returns the Sandbox. `abort()` undoes
    prepare() if no child was started.
    """

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.started = time.monotonic()
        self.ids = ids.lease(ids.fixed_pair(spec.outer_uid, spec.outer_gid),
                             spec.outer_id_range)
        try:
            self.limiter = limits.choose(spec)
            self.limiter.create()
        except BaseException:
            self.ids.release()
            raise
        self.channel: socket.socket | None = None
        self._opened: list[int] = []
        self._child_channel: socket.socket | None = None
        try:
            pairs: list[tuple[int, int]] = []
            for target, source in sorted(spec.fd_map().items()):
                if isinstance(source, int):
                    pairs.append((target, source))
                elif source == "channel":
                    self.channel, self._child_channel = socket.socketpair(
                        socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
                    pairs.append((target, self._child_channel.fileno()))
                else:
                    assert not isinstance(source, str)
                    fd = fds.open_grant(source.path, source.mode, source.options)
                    self._opened.append(fd)
                    pairs.append((target, fd))
            self._setup, self._child_setup = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            self._status_r, self.child_status = os.pipe2(os.O_CLOEXEC)
            self.child_sock = self._child_setup.fileno()
            self.plan = _plan(spec, self.limiter, tuple(pairs), self.ids)
        except BaseException:
            self.abort()
            raise

    def child_fds(self) -> tuple[int, ...]:
        """Descriptors the process that clones the init must hold (same numbers as here)."""
        return (self.child_sock, self.child_status, self.plan.parent_pidfd,
                *(src for _t, src in self.plan.fd_pairs), *mounts.tree_fds(self.plan.mount_ops))

    def report_clone_failure(self, err: int, message: str) -> None:
        _report(self.child_sock, "clone", err, message)

    def release_child_fds(self) -> None:
        """Close this process's copies of what only the child needs."""
        self._child_setup.close()
        if self._child_channel is not None:
            self._child_channel.close()
            self._child_channel = None
        for fd in (self.child_status, *self._opened):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._opened = []
        self.child_status = -1
        self.plan = self.plan._replace(mount_ops=mounts.close_trees(self.plan.mount_ops))

    def abort(self) -> None:
        """Undo prepare(): no child exists."""
        self.limiter.destroy()
        self.ids.release()
        for obj in ("_setup", "_child_setup", "channel", "_child_channel"):
            sock = getattr(self, obj, None)
            if sock is not None:
                sock.close()
        for fd in (getattr(self, "_status_r", -1), getattr(self, "child_status", -1),
                   *self._opened):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._opened = []
        plan: Plan | None = getattr(self, "plan", None)
        if plan is not None:
            self.plan = plan._replace(mount_ops=mounts.close_trees(plan.mount_ops))

    def complete(self, helper_pid: int | None = None, init_pid: int | None = None) -> Sandbox:
        """The parent's side of the setup; returns once the program has exec'ed.

        `init_pid`: the init's pid when this process cloned it; otherwise the
        process that did sends it as b"P" + pid on `child_sock` (`helper_pid`,
        a short-lived child of this process that does so and exits, is reaped
        here)."""
        spec, limiter, started = self.spec, self.limiter, self.started
        setup_parent, status_r, channel_parent = self._setup, self._status_r, self.channel
        conv = _Setup(setup_parent, started + SETUP_TIMEOUT)
        pidfd = -1
        listener: Listener | None = None
        failure: SetupFailure | None = None
        ready_for_maps = False  # the init said "U" (map_helper only)
        try:
            try:
                if init_pid is None:
                    data, _fds = conv.recv()
                    if data == b"U" and self.plan.map_helper:  # the init was quicker than "P"
                        ready_for_maps = True
                        data, _fds = conv.recv()
                    if helper_pid is not None:
                        os.waitpid(helper_pid, 0)
                    if data[:1] == b"E":
                        failure = _setup_failure(data)
                        if failure.step == "clone":
                            raise PreflightError(explain(failure.errno))
                    elif data[:1] == b"P" and len(data) == 1 + _PID.size:
                        init_pid = _PID.unpack_from(data, 1)[0]
                    else:
                        raise OSError(errno.EPROTO, "expected the init's pid first")
                if init_pid is not None:
                    # Straight away: the maps, then the cgroup, whose first move
                    # waits for an RCU grace period (1 to 10 ms) while the init
                    # builds its root; it waits for "C" before forking the workload.
                    pidfd = os.pidfd_open(init_pid)
                    if not self.plan.self_maps:
                        failure = self._map_ids(conv, init_pid, ready_for_maps)
                        if failure is not None:
                            raise OSError(failure.errno, failure.message)
                        setup_parent.send(b"G")
                    try:
                        limiter.attach(init_pid)
                    except OSError as e:
                        failure = SetupFailure("cgroup", e.errno or errno.EIO,
                                               f"joining the cgroup: {e.strerror}")
                        raise
                    with contextlib.suppress(OSError):
                        setup_parent.send(b"C")
                while failure is None:
                    data, got = conv.recv()
                    if not data:
                        break
                    if data[:1] == b"E":
                        failure = _setup_failure(data)
                    elif data[:1] == b"L" and len(got) == 1 and listener is None:
                        listener = Listener(got.pop())
                    for fd in got:  # nothing else may arrive with a descriptor
                        os.close(fd)
            except TimeoutError as e:
                failure = failure or SetupFailure("supervisor", errno.ETIMEDOUT, str(e))
            except OSError as e:
                failure = failure or SetupFailure("supervisor", e.errno or errno.EIO, str(e))
            if failure is not None:
                raise SetupError(_setup_status(failure, init_pid, pidfd, limiter, started))
        except BaseException:
            if listener is not None:
                listener.close()
            if init_pid is not None and failure is None:
                _kill_and_reap(init_pid, pidfd)
            if pidfd >= 0:
                os.close(pidfd)
            self.abort()
            raise
        setup_parent.close()
        assert init_pid is not None
        box = Sandbox._create(spec, init_pid, pidfd, status_r, listener, channel_parent,
                              limiter, started, self.plan.landlock_abi)
        box._lease = self.ids  # the sandbox's outer ids are held as long as its handle lives
        box.outer_ids = (self.ids.uid, self.ids.gid)
        return box

    def _map_ids(self, conv: _Setup, pid: int, ready: bool) -> SetupFailure | None:
        """Parent side of the userns step (root, or subordinate ids): the id maps, and as
        root without a cgroup the IPC namespace's caps. Returns the failure, if any."""
        step = "userns"
        try:
            if self.plan.map_helper:
                if not ready:
                    data, _fds = conv.recv()
                    if data[:1] == b"E":
                        return _setup_failure(data)
                    if data != b"U":
                        raise OSError(errno.EPROTO, "expected the init to be ready for its maps")
                ids.newidmap(pid, INNER_ID, *self.plan.map_ids)
            else:
                userns.write_maps(pid, *self.plan.map_ids, deny_setgroups=False)
                step = "rlimits"
                limits.set_ipc_limits(pid, self.limiter.ipc_limits())
        except OSError as e:
            return SetupFailure(step, e.errno or errno.EIO, str(e))
        return None


def prepare(spec: SandboxSpec) -> Launch:
    """Everything before the clone: cgroup, files, sockets, the child's plan."""
    return Launch(spec)


def spawn(spec: SandboxSpec) -> Sandbox:
    """Start `spec`'s program in a new sandbox; returns once it has exec'ed.

    Raises PreflightError when this machine cannot create user namespaces,
    SetupError when a setup step failed (its `.status` is the setup_error
    record), and limits.LimitsError / fds.FdError for resources the parent
    could not prepare.
    """
    launch = prepare(spec)
    plan = launch.plan
    helper: int | None = None
    init: int | None = None
    if _single_threaded():
        # Nothing else runs in this process, so a raw clone straight into the
        # namespaces finds libc and CPython consistent: one fork fewer.
        try:
            init = clone_init(plan)
        except OSError as e:
            launch.report_clone_failure(e.errno or errno.EPERM, str(e))
        if init == 0:
            try:
                child_setup(plan, launch.child_sock, launch.child_status)
            finally:
                os._exit(EXIT_SETUP)
    else:
        try:
            helper = os.fork()
        except BaseException:
            launch.abort()
            raise
        if helper == 0:
            try:
                _stage_a(plan, launch.child_sock, launch.child_status)
            finally:
                os._exit(EXIT_SETUP)
    launch.release_child_fds()
    return launch.complete(helper, init)


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _kill_and_reap(pid: int, pidfd: int) -> tuple[int, object]:
    try:
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _pid, status, ru = os.wait4(pid, 0)
    return status, ru


def _setup_status(failure: SetupFailure, init_pid: int | None, pidfd: int,
                  limiter: limits.Limiter, started: float) -> Status:
    if init_pid is not None:
        _kill_and_reap(init_pid, pidfd)
    code = EXIT_SETUP
    if failure.step == "exec":
        code = EXIT_NOT_FOUND if failure.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
    name = errno.errorcode.get(failure.errno, str(failure.errno))
    return Status(
        outcome=Outcome.SETUP_ERROR, exit_code=code, setup=failure,
        reason=f"sandbox setup failed at step '{failure.step}' ({name}): {failure.message}",
        wall_time=time.monotonic() - started, limits_mechanism=limiter.mechanism,
    )


_TOKEN = object()


class Sandbox:
    """A running sandbox. Made only by spawn(); no public constructor.

    The handle owns the sandbox: `kill()` ends all of it (SIGKILL to its
    init, which takes the whole PID namespace down) and records why, the
    first cause winning. Seccomp violations and timeouts are acted on
    whenever the handle is serviced: by `wait()`, `poll()`, or an event loop
    that watches `fds()` and calls `service()`.
    """

    pid: int
    spec: SandboxSpec
    outer_ids: tuple[int, int]  # (uid, gid) the sandbox runs as outside its user namespace
    _lease: ids.Lease
    _channel: socket.socket | None
    _channel_taken: bool
    _pidfd: int
    _status_r: int
    _listener: Listener | None
    _limiter: limits.Limiter
    _started: float
    _landlock_abi: int
    _deadline: float | None
    _cause: tuple[Outcome, str, Violation | None] | None
    _status: Status | None

    def __init__(self, token: object) -> None:
        if token is not _TOKEN:
            raise TypeError(
                "Sandbox has no public constructor; use warden.supervisor.sandbox.spawn()")

    @classmethod
    def _create(cls, spec: SandboxSpec, pid: int, pidfd: int, status_r: int,
                listener: Listener | None, channel: socket.socket | None,
                limiter: limits.Limiter, started: float, landlock_abi: int) -> Sandbox:
        self = cls(_TOKEN)
        self.spec = spec
        self.pid = pid
        self._channel = channel
        self._channel_taken = False
        self._pidfd = pidfd
        self._status_r = status_r
        self._listener = listener
        self._limiter = limiter
        self._started = started
        self._landlock_abi = landlock_abi
        self._deadline = (started + spec.wall_time_seconds
                          if spec.wall_time_seconds is not None else None)
        self._cause = None
        self._status = None
        return self

    def __repr__(self) -> str:
        state = self._status.outcome.value if self._status else "running"
        return f"<Sandbox pid={self.pid} {self.spec.argv[0]!r} {state}>"

    # -- state
    @property
    def channel(self) -> socket.socket | None:
        """The parent's end of the sandbox's channel (fd 3), while this handle owns it:
        None without one or once take_channel() has handed it over."""
        return self._channel

    def take_channel(self) -> socket.socket:
        """Hand the channel over to the caller: the handle no longer closes it.

        For code that outlives the handle's interest in the channel (the
        supervisor attaches it to an ipc endpoint). Raises SandboxError for a
        sandbox started without a channel, or when it was already taken."""
        if self._channel is None:
            raise SandboxError("the channel was already taken" if self._channel_taken
                               else "this sandbox was started without a channel")
        sock, self._channel, self._channel_taken = self._channel, None, True
        return sock

    @property
    def status(self) -> Status | None:
        return self._status

    @property
    def outcome(self) -> Outcome | None:
        return self._status.outcome if self._status else None

    def fds(self) -> tuple[int, ...]:
        """Descriptors an event loop should watch for readability, then call service()."""
        if self._status is not None:
            return ()
        fds = [self._pidfd]
        if self._listener is not None and self._listener.fd >= 0:
            fds.append(self._listener.fd)
        return tuple(fds)

    def time_left(self) -> float | None:
        """Seconds until the wall-clock timeout, or None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    # -- acting on it
    def kill(self, outcome: Outcome = Outcome.KILLED, reason: str = "killed by the supervisor") \
            -> None:
        """Kill the whole sandbox and record why (the first recorded cause wins)."""
        if self._status is not None:
            return
        if self._cause is None:
            self._cause = (outcome, reason, None)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        """Deliver `sig` to the workload (through its init, which forwards it)."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self, grace: float = 5.0) -> Status:
        """SIGTERM, wait up to `grace` seconds, then kill."""
        self.send_signal(signal.SIGTERM)
        st = self.wait(grace)
        if st is None:
            self.kill(Outcome.KILLED, f"did not exit within {grace:g}s of SIGTERM")
            st = self.wait()
        assert st is not None
        return st

    def service(self) -> Status | None:
        """Handle what is pending without blocking: violations, timeout, exit."""
        if self._status is not None:
            return self._status
        self._read_listener()
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.kill(Outcome.TIMEOUT, f"wall-clock timeout of {self.spec.wall_time_seconds:g}s")
        if wait_readable([self._pidfd], 0):
            self._reap()
        return self._status

    def _read_listener(self) -> None:
        """Record the first refused call the listener reports, and kill the sandbox for it.

        Never blocks; a call the sandbox withdrew is reported too (see notify.py)."""
        lst = self._listener
        if lst is None or lst.fd < 0:
            return
        while (state := lst.state()) == "pending":
            try:
                n = lst.receive()
            except OSError:
                break
            if n is None:
                continue
            if self._cause is None:
                self._cause = (Outcome.SECCOMP_VIOLATION, n.reason(), n.violation())
            self.kill()
            return
        if state != "idle":  # ended: no process uses the filter any more, or it failed
            lst.close()

    def _notify_weakened(self) -> tuple[str, ...]:
        """What the kernel lacked for reading this sandbox's refused calls."""
        if self._listener is None:
            return ()
        return (((WEAKENED_WAIT_KILLABLE,) if not wait_killable_supported() else ())
                + ((WEAKENED_NO_WITNESS,) if not self._listener.witnessed else ()))

    def poll(self) -> Status | None:
        return self.service()

    def wait(self, timeout: float | None = None) -> Status | None:
        """Block until the sandbox ends (or `timeout` seconds pass: then None)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.service()
            if st is not None:
                return st
            waits = [t for t in (self.time_left(),
                                 None if end is None else end - time.monotonic())
                     if t is not None]
            left = max(0.0, min(waits)) if waits else None
            if end is not None and time.monotonic() >= end:
                return None
            wait_readable(list(self.fds()), left)

    # -- the end
    def _reap(self) -> None:
        try:
            _pid, raw, ru = os.wait4(self.pid, 0)
            cpu = ru.ru_utime + ru.ru_stime
        except ChildProcessError:
            # Someone else reaped it (an embedder's waitpid(-1) SIGCHLD handler);
            # the init's own report on the status pipe still says how it ended.
            raw, cpu = 0, 0.0
        wall = time.monotonic() - self._started
        # The init is gone, so is every process of its namespace, so no process
        # uses the workload's filter: read the listener to its end before deciding
        # how the sandbox ended, so a refused call made just before the end (one
        # thread calls, another exits the group) is still the outcome.
        notify_weakened = self._notify_weakened()
        if self._listener is not None and self._listener.fd >= 0:
            self._listener.drain()
            self._read_listener()
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(self._status_r, 64)
        usage = self._limiter.usage()
        self._limiter.destroy()
        self._close()
        # Only a cgroup knows the sandbox's peak; the largest process's RSS is not it.
        peak = usage.peak_memory_bytes
        common: dict[str, Any] = dict(
            wall_time=wall, cpu_time=cpu, peak_memory_bytes=peak,
            limits_mechanism=self._limiter.mechanism, landlock_abi=self._landlock_abi,
            weakened=self._weakened() + notify_weakened)
        st: Status
        if self._cause is not None:
            outcome, reason, violation = self._cause
            code = 128 + signal.SIGSYS if outcome is Outcome.SECCOMP_VIOLATION else _KILLED_EXIT
            st = Status(outcome=outcome, exit_code=code, reason=reason, violation=violation,
                        signal=signal.SIGKILL, **common)
        elif len(data) >= pidns.STATUS.size:
            ws = pidns.STATUS.unpack_from(data)[0]
            if os.WIFEXITED(ws):
                rc = os.WEXITSTATUS(ws)
                st = Status(outcome=Outcome.OK if rc == 0 else Outcome.EXITED, exit_code=rc,
                            returncode=rc, **common)
            else:
                sig = os.WTERMSIG(ws)
                if usage.oom_killed and sig == signal.SIGKILL:
                    st = Status(outcome=Outcome.OUT_OF_MEMORY, exit_code=128 + sig, signal=sig,
                                reason="killed by the OOM killer at the memory limit",
                                **common)
                else:
                    st = Status(outcome=Outcome.SIGNALED, exit_code=128 + sig, signal=sig,
                                **common)
        elif usage.oom_killed:
            st = Status(outcome=Outcome.OUT_OF_MEMORY, exit_code=_KILLED_EXIT,
                        signal=signal.SIGKILL, reason="killed by the OOM killer at the memory "
                        "limit", **common)
        else:
            st = Status(outcome=Outcome.KILLED, exit_code=_KILLED_EXIT,
                        signal=os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else None,
                        reason=f"the sandbox's init ended without a status (wait status {raw})",
                        **common)
        self._status = st

    def _weakened(self) -> tuple[str, ...]:
        """Confinement this sandbox went without, each named with the reason."""
        out = []
        if self.spec.share_net:
            out.append("network namespace (shared with the host: --share-net or the profile)")
        if not self._landlock_abi:
            out.append("landlock (disabled for this sandbox)" if not self.spec.landlock
                       else "landlock (this kernel has none)")
        elif self._landlock_abi < 6:
            out.append(f"landlock scopes (ABI {self._landlock_abi} < 6: signals and abstract "
                       "unix sockets reach processes outside the sandbox)")
        mode = self._lease.mode
        if mode == "fixed":
            out.append(f"outer ids (fixed at {self._lease.uid}/{self._lease.gid} by "
                       "--outer-uid/--outer-gid or WARDEN_OUTER_UID/GID: per-user kernel "
                       "budgets shared with every sandbox given them)")
        elif mode == "shared":
            out.append(f"outer ids (the shared id {self._lease.uid}: warden runs as root of a "
                       "user namespace, where the host's id range is not mapped)")
        elif mode == "own":
            out.append(f"outer ids (your own uid {self._lease.uid}: per-user kernel budgets "
                       "shared with you and your other sandboxes; grant a range in /etc/subuid "
                       "and /etc/subgid, with newuidmap/newgidmap installed, for ids of its own)")
        if self._limiter.mechanism == "rlimit":
            ipc = "SysV IPC capped" if os.geteuid() == 0 else "SysV IPC not capped (needs root)"
            accepted = ", accepted by --memory-rlimit-only" if self.spec.memory_rlimit_only else ""
            out.append("memory limit (not enforced as one: no cgroup, so only RLIMIT_AS per "
                       f"process, RLIMIT_FSIZE per file and tmpfs sizes; {ipc}; processes "
                       f"together, pipes and sockets can hold more; peak memory "
                       f"unknown{accepted})")
        return tuple(out)

    def _close(self) -> None:
        self._lease.release()  # every process of the sandbox is gone: the ids are free
        if self._listener is not None:
            self._listener.close()
        for fd in (self._pidfd, self._status_r):
            if fd >= 0:
                os.close(fd)
        self._pidfd = self._status_r = -1

    def __del__(self) -> None:
        # A handle dropped while its sandbox runs: the embedder lost track of it.
        # Kill it rather than leave it and its cgroup behind, and say so.
        if getattr(self, "_status", True) is None:
            import warnings

            warnings.warn(f"{self!r} was dropped while running; killed", ResourceWarning,
                          stacklevel=1)
            self.kill(Outcome.KILLED, "the handle was dropped while the sandbox ran")
            with contextlib.suppress(OSError):
                self._reap()

    def close_channel(self) -> None:
        """Close the channel if this handle still owns it (see take_channel())."""
        if self._channel is not None:
            self._channel.close()

    # -- context manager: wait on success, kill on failure (trio's rule)
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is not None and self._status is None:
            self.kill(Outcome.KILLED, f"the embedder raised {et.__name__}")
        self.wait()
        self.close_channel()
