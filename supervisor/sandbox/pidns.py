"""pid 1 of the sandbox's PID namespace: reaps, forwards, and reports the workload's end.

The workload is never pid 1 (whose signal and reaping duties surprise
ordinary programs). This small init forks it, then waits in sigwaitinfo
with SIGCHLD and the forwardable signals blocked: it reaps every orphan,
forwards a signal to the workload only when it came from outside the
namespace (the supervisor; si_pid 0), and when the workload ends it writes
the raw wait status to the supervisor's status pipe and exits, which makes
the kernel kill everything left in the namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct

from warden.errors import EXIT_SETUP
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.lowlevel import wait_readable

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
WAITED = {signal.SIGCHLD, *FORWARDED}
STATUS = struct.Struct("=i")


def child_session() -> None:
    """The init's own session (no terminal's signals reach it or the workload)."""
    os.setsid()


def child_dumpable(dumpable: bool) -> None:
    """True until the parent has written the id maps (a supervisor that made itself
    non-dumpable passed that on, and /proc/PID/*_map is then the kernel's to refuse);
    False once they are: nothing in the sandbox may read this process's memory, a
    copy of the parent's. (The workload's exec makes the workload dumpable again.)"""
    _sys.prctl(_sys.PR_SET_DUMPABLE, 1 if dumpable else 0)


def child_parent_death_signal(parent_pidfd: int, *, last: bool = False) -> None:
    """SIGKILL when the parent dies, with the race closed: if the parent died
    before prctl, nobody would ever send it, so its pidfd is checked after.
    `last`: the pidfd is closed (an id change clears the signal: it is set twice)."""
    _sys.prctl(_sys.PR_SET_PDEATHSIG, signal.SIGKILL)
    if wait_readable([parent_pidfd], 0):
        os._exit(EXIT_SETUP)  # nobody is left to read a report
    if last:
        os.close(parent_pidfd)


def child_fork_workload() -> int:
    """clone(CLONE_FILES | CLONE_VFORK): 0 in the workload, its pid in the init.

    The workload shares the init's descriptor table until its exec, so the seccomp
    listener it creates right before exec stays in the init's table; the init sleeps
    meanwhile (CLONE_VFORK), so nothing touches the shared table."""
    return _sys.clone(_sys.CLONE_FILES | _sys.CLONE_VFORK | signal.SIGCHLD)


def child_workload_signals() -> None:
    """In the workload: the empty signal mask it execs with."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def child_own_process_group() -> None:
    """In the workload: kill(0, ...) from it reaches only itself and its children,
    not the init."""
    os.setpgid(0, 0)


def child_block_signals() -> None:
    """Before forking the workload, so no SIGCHLD is lost between fork and the wait loop."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)


def child_reset_signals() -> None:
    """Default dispositions (CPython ignores some, and ignored ones survive exec); the
    workload then empties its mask right before exec."""
    # exec resets caught signals by itself; only ignored ones would survive it. The
    # kernel lists them (SigIgn, a hex mask of signal numbers minus one): one read,
    # where asking for each of the 62 signals in turn took ~0.3 ms.
    for sig in _ignored_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)


def _ignored_signals() -> list[int]:
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        start = data.index(b"\nSigIgn:") + 8
        mask = int(data[start:data.index(b"\n", start)], 16)
    except (OSError, ValueError):  # no /proc here: ask for each signal
        return [sig for sig in signal.valid_signals()
                if sig not in (signal.SIGKILL, signal.SIGSTOP)
                and signal.getsignal(sig) in (signal.SIG_IGN, None)]
    return [n + 1 for n in range(mask.bit_length()) if mask >> n & 1]


def child_run_init(workload: int, status_fd: int) -> None:
    """Never returns: exits when the workload ends."""
    while True:
        info = signal.sigwaitinfo(WAITED)
        if info.si_signo == signal.SIGCHLD:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    os._exit(0)
                if pid == 0:
                    break
                if pid == workload:
                    os.write(status_fd, STATUS.pack(status))
                    os._exit(0)
        elif info.si_pid == 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(workload, info.si_signo)
