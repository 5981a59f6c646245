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
final Status once known, `kill(outcome, reason)` (first cause wins), and
`ending(pid)`: whether the worker is already on its way out, which decides who
went first when its channel closes (trusted-side rule 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Hashable

from warden.errors import EXIT_SETUP
from warden.supervisor.sandbox import Outcome, Sandbox, Status, Violation
from warden.supervisor.sandbox.lowlevel import wait_readable
from warden.supervisor.sandbox.notify import Listener

_PF_EXITING = 0x4  # include/linux/sched.h: set by do_exit() before it closes the files


def exiting(pid: int) -> bool:
    """True when `pid` is gone, a zombie, or inside do_exit().

    The kernel closes a dying process's files (exit_files) before its pidfd
    turns readable (exit_notify), so a channel's EOF always arrives before the
    death of a worker that simply exits or crashes. PF_EXITING is set before
    exit_files, so at that EOF a worker on its way out shows it; one that
    closed fd 3 (or exec'ed) and lives on does not.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:  # no such process (any more)
        return True
    state, flags = fields[0], int(fields[6])
    return state in (b"Z", b"X", b"x") or bool(flags & _PF_EXITING)


def status_ids(pid: int) -> tuple[list[int], list[int]]:
    """The Uid and Gid lines of /proc/PID/status (real, effective, saved, filesystem), as
    this process's user namespace shows them; OSError or ValueError if it cannot tell."""
    with open(f"/proc/{pid}/status", "rb") as f:
        lines = dict(ln.split(b":", 1) for ln in f.read().splitlines() if b":" in ln)
    try:
        return [int(x) for x in lines[b"Uid"].split()], [int(x) for x in lines[b"Gid"].split()]
    except KeyError:
        raise ValueError(f"/proc/{pid}/status has no Uid or Gid line") from None


def host_ids(pid: int, pidfd: int) -> tuple[int, int] | None:
    """The real uid and gid the kernel shows for `pid` (as this process sees them, i.e.
    the worker's outer ids), or None when it ended before they were read (its pid could
    then name another process: the pidfd says it did not)."""
    try:
        uids, gids = status_ids(pid)
        uid, gid = uids[0], gids[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if pidfd >= 0 and wait_readable([pidfd], 0) else (uid, gid)


def hasten_end(pid: int) -> None:
    """After its SIGKILL: the highest CPU weight the kernel lets us give `pid`, so its end
    (do_exit: unmapping memory, closing files) is not queued behind the busy siblings it
    shares a CPU group with (a zygote's workers share one). It runs no code of its own
    any more. Needs CAP_SYS_NICE (root); without it nothing changes."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, -20)


def first_child(pid: int) -> int | None:
    """The oldest live child of `pid`'s main thread (a sandbox init's workload), or None."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


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
    pidfd: int = -1  # the worker's own pidfd, where the subclass holds one

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

    def bind(self, host_pid: int) -> None:
        """The worker's pid as we see it, learnt from its HELLO (only the zygote's
        workers need it: the others are known by the pid we started)."""

    def fds(self) -> tuple[int, ...]:
        raise NotImplementedError

    def ending(self, worker_pid: int) -> bool:
        """Whether the worker (`worker_pid`, as we see it) has ended or is ending on its own.

        Its pidfd first: once that is readable the pid may be reaped and reused, and
        /proc would describe another process."""
        if self.pidfd < 0 or wait_readable([self.pidfd], 0):
            return True
        return exiting(worker_pid) or bool(wait_readable([self.pidfd], 0))

    def service(self) -> Status | None:
        raise NotImplementedError

    def death_fd(self) -> int:
        """The fd that turns readable when the worker has ended (-1: none, or ended)."""
        return self.pidfd

    def kill(self, outcome: Outcome, reason: str) -> None:
        raise NotImplementedError

    def send_signal(self, sig: int) -> None:
        raise NotImplementedError


class DeathWatch:
    """Workers the supervisor has killed and not yet seen end, checked out of turn.

    asyncio runs the callbacks of one loop iteration in order, so a pidfd that turns
    readable while 200 channels have replies queued is served after all of them, and a
    whole iteration later than the kernel said. `check()` asks the kernel (one poll(0)
    over these pidfds, only while there are any) and serves an ended worker at once; the
    supervisor calls it at the start of every channel's read callback and every call it
    sends, so a death is reported within one callback of the kernel's report. The loop's
    own reader on each pidfd stays: whichever comes first serves the worker, the same way.
    """

    def __init__(self) -> None:
        self._poll = select.poll()
        self._by_fd: dict[int, tuple[Hashable, Callable[[], object]]] = {}
        self._fd_of: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._by_fd)

    def add(self, key: Hashable, fd: int, callback: Callable[[], object]) -> None:
        if fd < 0 or key in self._fd_of:
            return
        self._poll.register(fd, select.POLLIN)
        self._by_fd[fd] = (key, callback)
        self._fd_of[key] = fd

    def discard(self, key: Hashable) -> None:
        """Before the fd is closed (or right after, with no fd opened in between)."""
        fd = self._fd_of.pop(key, None)
        if fd is not None:
            del self._by_fd[fd]
            self._poll.unregister(fd)

    def check(self) -> None:
        if not self._by_fd:
            return
        for fd, revents in self._poll.poll(0):
            entry = self._by_fd.get(fd)
            if entry is None:
                continue
            key, callback = entry
            if revents & select.POLLNVAL:  # closed under us: the loop's reader serves it
                self.discard(key)
                continue
            callback()  # serves the worker; its end discards it here


class SandboxProcess(WorkerProcess):
    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.pid = box.pid

    def fds(self) -> tuple[int, ...]:
        fds = self.box.fds()
        return (*fds, *self.listener_fds()) if fds else ()

    def death_fd(self) -> int:
        fds = self.box.fds()
        return fds[0] if fds else -1  # the sandbox init's pidfd

    def ending(self, worker_pid: int) -> bool:
        if self.box.status is not None or exiting(self.pid):
            return True
        if worker_pid != self.pid:
            return exiting(worker_pid)
        # A program: the pid we know is the sandbox's init, which forked the workload
        # first (orphans it adopts come later in the kernel's children list).
        child = first_child(self.pid)
        return child is None or exiting(child)

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
            hasten_end(self.pid)

    def send_signal(self, sig: int) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)


async def final_status(proc: WorkerProcess) -> Status:
    """The Status of a process that was killed or is ending, once it is known."""
    while True:
        st = proc.service()
        if st is not None:
            return st
        await asyncio.sleep(0.002)


class Reaper:
    """Collects processes nobody holds a handle to (a spawn cancelled or failed midway),
    so none becomes a zombie; `drain()` waits for all of them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def reap_later(self, proc: WorkerProcess) -> None:
        async def reap() -> None:
            await final_status(proc)
            if isinstance(proc, SandboxProcess):
                proc.box.close_channel()
        task = asyncio.ensure_future(reap())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
