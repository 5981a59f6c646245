"""Parent side of a sandbox's start: prepare() before the clone, Launch.complete() after.

Who runs this: the supervisor (or `warden run`), outside the sandbox, with
its own privileges (root or an ordinary user). Before the clone, `prepare()`
turns the spec into the child's Plan through the mechanisms' `parent_*`
halves (cgroup, outer ids, `--file` opens, bind trees, sockets), so a bad
spec fails before any process exists. After it, `Launch.complete()` holds
the parent's side of the setup conversation (protocol.py): the init's pid,
its id maps, its cgroup, the seccomp listener, and any Failed record, until
end-of-file says the program has exec'ed. Nothing the child sends is
trusted: a record that is no declared message is a setup failure.

Split around the clone so that another process (a zygote) can do the clone;
`spawn()` does all of it in this process. The child's side is child.py, the
handle it returns handle.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import time

from warden.supervisor.sandbox import (
    _sys,
    caps,
    fds,
    ids,
    landlock,
    limits,
    mounts,
    seccomp,
    userns,
)
from warden.supervisor.sandbox.child import _stage_a, child_setup, clone_init, report
from warden.supervisor.sandbox.errors import SetupError
from warden.supervisor.sandbox.handle import Sandbox
from warden.supervisor.sandbox.lowlevel import (
    close_all,
    is_seccomp_listener,
    recv_with_fds,
    single_threaded,
    wait_readable,
)
from warden.supervisor.sandbox.notify import Listener
from warden.supervisor.sandbox.plan import Plan
from warden.supervisor.sandbox.preflight import PreflightError, explain
from warden.supervisor.sandbox.protocol import (
    MAX_RECORD,
    CgroupJoined,
    Failed,
    InitPid,
    ListenerFd,
    MapsWritten,
    Message,
    ReadyForMaps,
    SetupProtocolError,
    SetupStep,
    decode,
    encode,
)
from warden.supervisor.sandbox.spec import SandboxSpec
from warden.supervisor.sandbox.status import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_SETUP,
    Outcome,
    SetupFailure,
    Status,
)
from warden.supervisor.sandbox.userns import INNER_ID

SETUP_TIMEOUT = 30.0


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


_landlock_abi: int | None = None


def _plan(spec: SandboxSpec, limiter: limits.Limiter, pairs: tuple[tuple[int, int], ...],
          lease: ids.Lease) -> Plan:
    global _landlock_abi
    if _landlock_abi is None:
        _landlock_abi = landlock.parent_abi()
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
        mount_ops=mounts.parent_plan(tuple((b.source, b.dest, b.writable) for b in spec.binds),
                                    tuple((t.dest, limiter.tmpfs_size(t.size_bytes))
                                          for t in spec.tmpfs),
                                    spec.data_files, spec.symlinks, spec.dirs,
                                    owned=tuple(b.owned for b in spec.binds)),
        tmp_size=limiter.tmpfs_size(spec.tmp_size_bytes),
        shm_size=limiter.tmpfs_size(spec.shm_size_bytes),
        chdir=os.fsencode(spec.chdir),
        hostname=spec.hostname.encode(),
        share_net=spec.share_net,
        early_rlimits=tuple(r for r in rl if r[0] not in late_kinds),
        late_rlimits=tuple(r for r in rl if r[0] in late_kinds),
        fd_pairs=pairs,
        landlock_abi=_landlock_abi if spec.landlock else 0,
        landlock_rules=landlock.parent_rules(tuple((b.dest, b.writable) for b in spec.binds)
                                            + tuple((d, False) for d, _c in spec.data_files),
                                            tuple(t.dest for t in spec.tmpfs)),
        argv=tuple(os.fsencode(a) for a in spec.argv),
        envp=tuple(os.fsencode(f"{k}={v}") for k, v in spec.env),
        search_path=path_dirs,
        seccomp_filter=spec.seccomp_filter,
        guard_filter=seccomp.parent_guard(
            spec.seccomp_filter, tuple((b.source, b.dest) for b in spec.binds
                                       if b.owned and b.writable), spec.userns_limits),
        notify=spec.notify,
        last_cap=caps.parent_last_cap(),
        # As root, and after newgidmap (which leaves setgroups allowed), the
        # supplementary groups inherited from the supervisor can and must go.
        drop_groups=root or lease.mode != "own",
        map_ids=(lease.uid, lease.gid),
        self_maps=not root and lease.mode == "own",
        map_helper=not root and lease.mode != "own",
        clone_as=(lease.uid, lease.gid) if root else None,
        userns_limits=userns.parent_limits(spec.userns_limits),
        mask_proc_keys=spec.mask_proc_keys,
    )
    # Last, so that nothing after it can fail and leak the detached trees.
    return plan._replace(mount_ops=mounts.parent_detach(plan.mount_ops, (lease.uid, lease.gid)))


class _Setup:
    """The parent's side of one child's setup conversation."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def recv(self) -> tuple[Message | None, list[int]]:
        """Next message and any fds that came with it; (None, []) at end-of-file.
        Raises SetupProtocolError for a record that is no declared message."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0 or not wait_readable([self.sock.fileno()], left):
                raise TimeoutError("sandbox setup did not finish in time")
            try:
                data, got = recv_with_fds(self.sock, MAX_RECORD, 4)
                break
            except ConnectionResetError:
                # The child side closed with a message of ours unread (it failed
                # before reading CgroupJoined). Reading the error clears it; what
                # the child sent before closing is still queued behind it.
                continue
        if not data:
            close_all(got)
            return None, []
        try:
            return decode(data), got
        except SetupProtocolError:
            close_all(got)
            raise

    def send(self, msg: Message) -> None:
        self.sock.send(encode(msg))


def _setup_failure(msg: Failed) -> SetupFailure:
    return SetupFailure(msg.step.value, msg.errno, msg.message or os.strerror(msg.errno))


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
        # How the init got into its cgroup: "clone_into_cgroup" (clone3, cgroup v2),
        # "migration" (moved after the clone), None (no cgroup: rlimits).
        self.cgroup_entry: str | None = None
        self._released = False
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
                    fd = fds.parent_open_grant(source.path, source.mode, source.options)
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
        report(self.child_sock, SetupStep.CLONE, err, message)

    def release_child_fds(self) -> None:
        """Close this process's copies of what only the child needs (once; complete()
        does it if the cloner has not)."""
        if self._released:
            return
        self._released = True
        self._child_setup.close()
        if self._child_channel is not None:
            self._child_channel.close()
            self._child_channel = None
        for fd in (self.child_status, *self._opened):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._opened = []
        self.child_status = -1
        self.plan = self.plan._replace(mount_ops=mounts.parent_close(self.plan.mount_ops))

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
            self.plan = plan._replace(mount_ops=mounts.parent_close(plan.mount_ops))

    def complete(self, helper_pid: int | None = None, init_pid: int | None = None) -> Sandbox:
        """The parent's side of the setup; returns once the program has exec'ed.

        `init_pid`: the init's pid when this process cloned it; otherwise the
        process that did sends it as protocol.InitPid on `child_sock`
        (`helper_pid`, a short-lived child of this process that does so and
        exits, is reaped here). A record from the child that is no declared
        message is a setup failure of the step `supervisor`."""
        spec, limiter, started = self.spec, self.limiter, self.started
        setup_parent, status_r, channel_parent = self._setup, self._status_r, self.channel
        conv = _Setup(setup_parent, started + SETUP_TIMEOUT)
        pidfd = -1
        listener: Listener | None = None
        failure: SetupFailure | None = None
        ready_for_maps = False  # the init said ReadyForMaps (map_helper only)
        try:
            try:
                if init_pid is None:
                    try:
                        msg, got = conv.recv()
                        close_all(got)
                        if isinstance(msg, ReadyForMaps) and self.plan.map_helper:
                            ready_for_maps = True  # the init was quicker than its cloner
                            msg, got = conv.recv()
                            close_all(got)
                    except BaseException:
                        # No pid (a timeout, or a record that is none): the cloner may
                        # hang, so it is killed before it is reaped.
                        if helper_pid is not None:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(helper_pid, signal.SIGKILL)
                            os.waitpid(helper_pid, 0)
                        raise
                    if helper_pid is not None:
                        os.waitpid(helper_pid, 0)
                    if isinstance(msg, Failed):
                        failure = _setup_failure(msg)
                        if msg.step is SetupStep.CLONE:
                            raise PreflightError(explain(failure.errno))
                    elif isinstance(msg, InitPid):
                        _check_child(msg.pid)
                        init_pid = msg.pid
                    else:
                        raise OSError(errno.EPROTO, "expected the init's pid first")
                if init_pid is not None:
                    # Straight away: the maps, then the cgroup, whose first move
                    # waits for an RCU grace period (1 to 10 ms) while the init
                    # builds its root; it waits for CgroupJoined before forking
                    # the workload.
                    pidfd = os.pidfd_open(init_pid)
                    if not self.plan.self_maps:
                        failure = self._map_ids(conv, init_pid, ready_for_maps)
                        if failure is not None:
                            raise OSError(failure.errno, failure.message)
                        conv.send(MapsWritten())
                    born_in = self.cgroup_entry == "clone_into_cgroup"
                    try:
                        limiter.attach(init_pid, born_in)
                    except OSError as e:
                        failure = SetupFailure(SetupStep.CGROUP.value, e.errno or errno.EIO,
                                               f"joining the cgroup: {e.strerror}")
                        raise
                    if limiter.mechanism != "rlimit" and not born_in:
                        self.cgroup_entry = "migration"
                    with contextlib.suppress(OSError):
                        conv.send(CgroupJoined())
                # From here on only the child holds its ends: end-of-file on the
                # setup socket then means the program has exec'ed (or the child died).
                self.release_child_fds()
                while failure is None:
                    msg, got = conv.recv()
                    if msg is None:
                        break
                    if isinstance(msg, ListenerFd) and self.plan.notify and listener is None \
                            and len(got) == 1 and is_seccomp_listener(got[0]):
                        listener = Listener(got.pop())
                    close_all(got)  # nothing else may arrive with a descriptor
                    if isinstance(msg, Failed):
                        failure = _setup_failure(msg)
                    elif listener is None or not isinstance(msg, ListenerFd):
                        raise SetupProtocolError(
                            "a listener record without exactly one seccomp listener"
                            if isinstance(msg, ListenerFd) else f"{type(msg).__name__} out of turn")
            except TimeoutError as e:
                failure = failure or _supervisor_failure(errno.ETIMEDOUT, str(e))
            except SetupProtocolError as e:
                failure = failure or _supervisor_failure(
                    errno.EPROTO, f"the sandbox broke the setup protocol: {e}")
            except OSError as e:
                failure = failure or _supervisor_failure(e.errno or errno.EIO, str(e))
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
        box: Sandbox = Sandbox._create(spec, init_pid, pidfd, status_r, listener,
                                       channel_parent, limiter, started,
                                       self.plan.landlock_abi, self.ids,
                                       cgroup_entry=self.cgroup_entry)
        return box

    def _map_ids(self, conv: _Setup, pid: int, ready: bool) -> SetupFailure | None:
        """Parent side of the id maps (root, or subordinate ids), and as root without a
        cgroup the IPC namespace's caps. Returns the failure, if any."""
        step = SetupStep.PARENT_MAPS
        try:
            if self.plan.map_helper:
                if not ready:
                    msg, got = conv.recv()
                    close_all(got)
                    if isinstance(msg, Failed):
                        return _setup_failure(msg)
                    if not isinstance(msg, ReadyForMaps):
                        raise OSError(errno.EPROTO, "expected the init to be ready for its maps")
                ids.parent_newidmap(pid, INNER_ID, *self.plan.map_ids)
            else:
                userns.parent_maps(pid, *self.plan.map_ids)
                step = SetupStep.IPC_LIMITS
                limits.parent_ipc_limits(pid, self.limiter.ipc_limits())
        except OSError as e:
            return SetupFailure(step.value, e.errno or errno.EIO, str(e))
        return None


def _check_child(pid: int) -> None:
    """The init was cloned with CLONE_PARENT, so it is this process's child: a pid
    that is not is none to signal, map or reap (WNOWAIT: it stays unreaped)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        raise SetupProtocolError(f"pid {pid} is not a child of this process") from None


def _supervisor_failure(err: int, message: str) -> SetupFailure:
    return SetupFailure(SetupStep.SUPERVISOR.value, err, message)


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
    if single_threaded():
        # Nothing else runs in this process, so a raw clone straight into the
        # namespaces finds libc and CPython consistent: one fork fewer.
        into = launch.limiter.clone_into_fd()
        if into >= 0:
            # cgroup v2: born in its cgroup, so no move (and no wait for the move's
            # RCU grace period). A kernel before 5.7, or a cgroup this process may
            # not clone into, refuses: then the clone below, and the move.
            with contextlib.suppress(OSError):
                init = clone_init(plan, into_cgroup=into)
                launch.cgroup_entry = "clone_into_cgroup"
        if init is None:
            try:
                init = clone_init(plan)
            except OSError as e:
                launch.report_clone_failure(e.errno or errno.EPERM, str(e))
        if init == 0:
            try:
                child_setup(plan, launch.child_sock, launch.child_status)
            finally:
                os._exit(EXIT_SETUP)
        if init is None or plan.map_helper:
            # A Failed record, then end-of-file; or (newuidmap) the parent reads the
            # init's ReadyForMaps first, and must see end-of-file if it dies first.
            launch.release_child_fds()
        # Else the parent's copies of the child's descriptors are closed in
        # complete(), once the maps are written and the cgroup move is done: the
        # init waits for both, and closing ~20 descriptors takes ~0.4 ms.
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


def _kill_and_reap(pid: int, pidfd: int) -> tuple[int, object]:
    try:
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        _pid, status, ru = os.wait4(pid, 0)
    except ChildProcessError:  # reaped by someone else (an embedder's waitpid(-1))
        return 0, None
    return status, ru


def _setup_status(failure: SetupFailure, init_pid: int | None, pidfd: int,
                  limiter: limits.Limiter, started: float) -> Status:
    if init_pid is not None:
        _kill_and_reap(init_pid, pidfd)
    code = EXIT_SETUP
    if failure.step == SetupStep.EXEC.value:
        code = EXIT_NOT_FOUND if failure.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
    name = errno.errorcode.get(failure.errno, str(failure.errno))
    return Status(
        outcome=Outcome.SETUP_ERROR, exit_code=code, setup=failure,
        reason=f"sandbox setup failed at step '{failure.step}' ({name}): {failure.message}",
        wall_time=time.monotonic() - started, limits_mechanism=limiter.mechanism,
    )
