"""The three ways a worker process is held, behind one small interface.

- `SandboxProcess`: a `warden run` sandbox (the `spawn` start method and
  programs); its init is our child and the sandbox module classifies the end.
- `ForkedProcess`: a confined worker we forked ourselves (`fork`); our child.
- `ZygoteProcess`: a confined worker the zygote forked; we hold a pidfd for
  killing and learn its wait status from the zygote.

Python workers (every start method) hand us their seccomp listener: a call their
filter refuses waits in the kernel until we read it here, record it and kill
the worker (`check_listener`).

Each exposes the fds to watch, a non-blocking `service()` that returns the
final Status once known, and `kill(outcome, reason)` (first cause wins).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable

from supervisor.sandbox import Outcome, Sandbox, Status, Violation
from supervisor.sandbox.notify import Listener

EXIT_SETUP = 125


def readable(fds: list[int], timeout: float | None = 0) -> list[int]:
    """The fds among `fds` that are readable (poll: select() breaks on fds >= 1024,
    which a supervisor holding a thousand workers has)."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else int(timeout * 1000)
    return [fd for fd, _ev in p.poll(ms)]


def status_from_wait(ws: int, cause: tuple[Outcome, str] | None, started: float,
                     setup_done: bool, violation: Violation | None = None) -> Status:
    """Classify a worker's wait status; a recorded cause (ours) wins."""
    wall = time.monotonic() - started
    if cause is not None:
        outcome, reason = cause
        code = 128 + (signal.SIGSYS if outcome is Outcome.SECCOMP_VIOLATION else signal.SIGKILL)
        return Status(outcome=outcome, exit_code=code, signal=signal.SIGKILL, reason=reason,
                      violation=violation, wall_time=wall, limits_mechanism="rlimit")
    if os.WIFEXITED(ws):
        rc = os.WEXITSTATUS(ws)
        if rc == EXIT_SETUP and not setup_done:
            return Status(outcome=Outcome.SETUP_ERROR, exit_code=rc, returncode=rc,
                          reason="the worker failed before it was ready", wall_time=wall,
                          limits_mechanism="rlimit")
        return Status(outcome=Outcome.OK if rc == 0 else Outcome.EXITED, exit_code=rc,
                      returncode=rc, wall_time=wall, limits_mechanism="rlimit")
    sig = os.WTERMSIG(ws) if os.WIFSIGNALED(ws) else signal.SIGKILL
    if sig == signal.SIGSYS:
        return Status(outcome=Outcome.SECCOMP_VIOLATION, exit_code=128 + sig, signal=sig,
                      reason="the worker's seccomp filter killed it (SIGSYS); the call is "
                             "not recorded for in-process filters", wall_time=wall,
                      limits_mechanism="rlimit")
    return Status(outcome=Outcome.SIGNALED, exit_code=128 + sig, signal=sig, wall_time=wall,
                  limits_mechanism="rlimit")


class WorkerProcess:
    pid: int
    setup_done: bool = False
    notify: Callable[[], object] | None = None  # called when the status becomes known
    # The worker's own seccomp listener (zygote and fork workers): what its filter
    # refuses blocks in the kernel and is reported here, with the call's name.
    listener: Listener | None = None
    violation: Violation | None = None
    violation_reason = ""

    def adopt_listener(self, fd: int) -> None:
        self.listener = Listener(fd)

    def listener_fds(self) -> tuple[int, ...]:
        return (self.listener.fd,) if self.listener is not None and self.listener.fd >= 0 else ()

    def check_listener(self) -> None:
        """A refused call waiting on the listener: record it and kill the worker."""
        lst = self.listener
        if lst is None or lst.fd < 0:
            return
        state = lst.state()
        if state == "hup":
            lst.close()
            return
        if state != "pending":
            return
        try:
            n = lst.receive()
        except OSError:
            lst.close()
            return
        if n is not None and self.violation is None:
            self.violation, self.violation_reason = n.violation(), n.reason()
            self.kill(Outcome.SECCOMP_VIOLATION, self.violation_reason)

    def close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()

    def fds(self) -> tuple[int, ...]:
        raise NotImplementedError

    def service(self) -> Status | None:
        raise NotImplementedError

    def kill(self, outcome: Outcome, reason: str) -> None:
        raise NotImplementedError

    def send_signal(self, sig: int) -> None:
        raise NotImplementedError


class SandboxProcess(WorkerProcess):
    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.pid = box.pid

    def fds(self) -> tuple[int, ...]:
        fds = self.box.fds()
        return (*fds, *self.listener_fds()) if fds else ()

    def service(self) -> Status | None:
        self.check_listener()
        st = self.box.service()
        if st is None:
            return None
        self.check_listener()  # the sandbox is gone: what the worker did last is read now
        self.close_listener()
        if self.violation is not None and st.outcome in (
                Outcome.SECCOMP_VIOLATION, Outcome.OK, Outcome.EXITED, Outcome.SIGNALED):
            return Status(**{**st.__dict__, "outcome": Outcome.SECCOMP_VIOLATION,
                             "exit_code": 128 + signal.SIGSYS, "violation": self.violation,
                             "reason": self.violation_reason})
        if (st.outcome is Outcome.SIGNALED and st.signal == signal.SIGSYS):
            return Status(**{**st.__dict__, "outcome": Outcome.SECCOMP_VIOLATION,
                             "reason": "the sandbox's launch filter killed the worker "
                                       "(SIGSYS): a call it refuses as well as the worker's "
                                       "own filter, or one made before that filter was "
                                       "loaded; the call is not recorded"})
        if st.outcome is Outcome.EXITED and st.returncode == EXIT_SETUP and not self.setup_done:
            return Status(**{**st.__dict__, "outcome": Outcome.SETUP_ERROR,
                             "reason": "the worker failed before it was ready"})
        return st

    def kill(self, outcome: Outcome, reason: str) -> None:
        self.box.kill(outcome, reason)

    def send_signal(self, sig: int) -> None:
        self.box.send_signal(sig)


class ForkedProcess(WorkerProcess):
    """Our own child, pid 1 of its namespace; reaped with waitpid on its pid only."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.started = time.monotonic()
        self.cause: tuple[Outcome, str] | None = None
        self.status: Status | None = None

    def fds(self) -> tuple[int, ...]:
        return () if self.status is not None else (self.pidfd, *self.listener_fds())

    def service(self) -> Status | None:
        if self.status is not None:
            return self.status
        self.check_listener()
        try:
            pid, ws = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else's waitpid(-1): no status to read
            pid, ws = self.pid, signal.SIGKILL
        if pid == 0:
            return None
        self.check_listener()  # it is gone: what it did last is read now
        self.status = status_from_wait(ws, self.cause, self.started, self.setup_done,
                                       self.violation)
        os.close(self.pidfd)
        self.pidfd = -1
        self.close_listener()
        return self.status

    def kill(self, outcome: Outcome, reason: str) -> None:
        if self.status is not None:
            return
        if self.cause is None:
            self.cause = (outcome, reason)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)
