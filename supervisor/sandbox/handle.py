"""The running sandbox's handle: poll, wait, kill, the seccomp listener, the outcome.

Who runs this: the supervisor, outside the sandbox, once launch.py has seen the
program exec. Everything the handle reports comes from the kernel (wait status,
seccomp user-notify, cgroup counters) and the init's status pipe, never from
the program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from warden.supervisor.sandbox import ids, limits, pidns
from warden.supervisor.sandbox.errors import SandboxError
from warden.supervisor.sandbox.lowlevel import NoPublicConstructor, wait_readable
from warden.supervisor.sandbox.notify import (
    WEAKENED_NO_WITNESS,
    Listener,
    Notification,
    respond,
    violation_path,
)
from warden.supervisor.sandbox.seccomp import WEAKENED_WAIT_KILLABLE, wait_killable_supported
from warden.supervisor.sandbox.spec import SandboxSpec
from warden.supervisor.sandbox.status import Complaint, Outcome, Status, Violation

_KILLED_EXIT = 128 + signal.SIGKILL

WEAKENED_BROKER_WITHDRAWN = (
    "seccomp refusal witness (the broker shares the listener: a call withdrawn before "
    "warden read it may have been a brokered one, so it is not reported as a violation)")


# Distinct refused calls --complain keeps (each with its count): a program cannot
# grow the supervisor's memory by making every possible call.
MAX_COMPLAINTS = 512


class NotificationBroker(Protocol):
    """What the running sandbox needs of a broker sharing its seccomp listener
    (warden.supervisor.broker.transparent.TransparentBroker is one; this layer does
    not import it)."""

    def handle(self, n: Notification) -> bool:
        """Answer `n` if it is a brokered call (True); False leaves it a violation."""
        ...

    def fileno(self) -> int:
        """Readable when work is pending: then call ready()."""
        ...

    def ready(self) -> None: ...

    def next_deadline(self) -> float | None:
        """time.monotonic() by which ready() must be called, or None."""
        ...

    def close(self) -> None: ...


class Sandbox(metaclass=NoPublicConstructor):
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
    # How its init entered its cgroup: "clone_into_cgroup" (born there: clone3 on
    # cgroup v2), "migration" (moved after the clone: cgroup v1, or v2 where clone3
    # could not), None without a cgroup (rlimits).
    cgroup_entry: str | None
    _lease: ids.Lease
    _channel: socket.socket | None
    _channel_taken: bool
    _pidfd: int
    _status_r: int
    _listener: Listener | None
    _broker: NotificationBroker | None
    _limiter: limits.Limiter
    _started: float
    _landlock_abi: int
    _deadline: float | None
    _cause: tuple[Outcome, str, Violation | None] | None
    _complaints: dict[tuple[str, str], Complaint]
    _status: Status | None

    _factory_name = "warden.supervisor.sandbox.spawn()"

    def __init__(self, spec: SandboxSpec, pid: int, pidfd: int, status_r: int,
                 listener: Listener | None, channel: socket.socket | None,
                 limiter: limits.Limiter, started: float, landlock_abi: int,
                 lease: ids.Lease, cgroup_entry: str | None = None) -> None:
        """Only through `Sandbox._create(...)` (Launch.complete does it)."""
        self.spec = spec
        self.cgroup_entry = cgroup_entry
        self.pid = pid
        self._channel = channel
        self._channel_taken = False
        self._pidfd = pidfd
        self._status_r = status_r
        self._listener = listener
        self._broker = None
        self._limiter = limiter
        self._started = started
        self._landlock_abi = landlock_abi
        self._deadline = (started + spec.wall_time_seconds
                          if spec.wall_time_seconds is not None else None)
        self._cause = None
        self._complaints = {}
        self._status = None
        self._lease = lease  # the sandbox's outer ids are held as long as its handle lives
        self.outer_ids = (lease.uid, lease.gid)

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
        if self._broker is not None:
            fds.append(self._broker.fileno())
        return tuple(fds)

    def attach_broker(self, make: Callable[[int], NotificationBroker]) -> NotificationBroker:
        """Share the seccomp listener with a broker: `make(seccomp_fd)` returns it.

        From then on each notification goes to `broker.handle()` first; what it
        does not take stays a violation. Call it right after spawn(), before the
        handle is first serviced: the program's calls wait in the kernel until
        then. The handle closes the broker when the sandbox ends. Raises
        SandboxError when the sandbox has no listener (its filter sends nothing
        to user-notify) or already has a broker."""
        lst = self._listener
        if self._status is not None or lst is None or lst.seccomp_fd < 0:
            raise SandboxError("this sandbox has no seccomp listener to share with a broker")
        if self._broker is not None:
            raise SandboxError("this sandbox already has a broker")
        self._broker = make(lst.seccomp_fd)
        return self._broker

    def wake_in(self) -> float | None:
        """Seconds until service() has timed work to do (the wall-clock timeout, a
        brokered connect's deadline), or None: what an event loop waits at most."""
        times = [t for t in (self.time_left(),) if t is not None]
        if self._broker is not None and self._status is None:
            deadline = self._broker.next_deadline()
            if deadline is not None:
                times.append(max(0.0, deadline - time.monotonic()))
        return min(times) if times else None

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
        if self._broker is not None:
            self._broker.ready()
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
            if self._broker is not None:
                if n.withdrawn:
                    # Queued, then taken back before we read it: with the broker on
                    # the listener most notifications are brokered calls, so this is
                    # no evidence of a refused one (WEAKENED_BROKER_WITHDRAWN says so).
                    continue
                if self._broker.handle(n):
                    continue
            if self.spec.complain:
                self._complain(lst.seccomp_fd, n)
                continue
            if self._cause is None:
                v = n.violation()
                path = violation_path(lst.seccomp_fd, n, v)
                if path is not None:
                    v = dataclasses.replace(v, path=path)
                self._cause = (Outcome.SECCOMP_VIOLATION, n.reason(), v)
            self.kill()
            return
        if state != "idle":  # ended: no process uses the filter any more, or it failed
            lst.close()

    def _complain(self, fd: int, n: Notification) -> None:
        """--complain: record the refused call (first args, count) and answer EPERM.
        A withdrawn one was never made; distinct calls kept are bounded."""
        if n.withdrawn:
            return
        v = n.violation()
        key = (v.syscall, v.arch)
        seen = self._complaints.get(key)
        if seen is not None:
            self._complaints[key] = dataclasses.replace(seen, count=seen.count + 1)
        elif len(self._complaints) < MAX_COMPLAINTS:
            self._complaints[key] = Complaint(v.syscall, v.nr, v.arch, v.args, 1)
        respond(fd, n.id, error=errno.EPERM)

    def _notify_weakened(self) -> tuple[str, ...]:
        """What the kernel lacked for reading this sandbox's refused calls."""
        if self._listener is None:
            return ()
        return (((WEAKENED_BROKER_WITHDRAWN,) if self._broker is not None
                 and self._listener.witnessed else ())
                + ((WEAKENED_WAIT_KILLABLE,) if not wait_killable_supported() else ())
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
            waits = [t for t in (self.wake_in(),
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
            weakened=self._weakened() + notify_weakened,
            complaints=tuple(self._complaints.values()))
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
        if self._broker is not None:
            # Before the listener: it answers its connects in progress through it.
            with contextlib.suppress(Exception):
                self._broker.close()
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
