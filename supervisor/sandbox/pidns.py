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

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)
WAITED = {signal.SIGCHLD, *FORWARDED}
STATUS = struct.Struct("=i")


def block_signals() -> None:
    """Before forking the workload, so no SIGCHLD is lost between fork and the wait loop."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)


def reset_signals() -> None:
    """Default dispositions (CPython ignores some, and ignored ones survive exec); the
    workload then empties its mask right before exec."""
    # exec resets caught signals by itself; only ignored ones would survive it.
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) in (signal.SIG_IGN, None):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def run_init(workload: int, status_fd: int) -> None:
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
