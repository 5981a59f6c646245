"""The sandbox API works in a process whose descriptors are numbered past 1024."""

from __future__ import annotations

import signal
import subprocess

from tests.high_fds import high_fds
from tests.sandbox.sandbox_util import PYTHON, py, supervisor_env
from warden.supervisor.sandbox import Outcome

__all__ = ["high_fds"]


def test_a_sandbox_starts_and_ends_when_every_new_fd_is_above_1024(high_fds: int) -> None:
    r = py("print('hi')")
    assert r.status.outcome is Outcome.OK, r.status
    assert r.out == "hi\n"
    # And a violation, which goes through the listener's wait, is still observed.
    r = py("import time\ntime.sleep(60)", timeout=0.5)
    assert r.status.outcome is Outcome.TIMEOUT, r.status



_RUN_WITH_HIGH_FDS = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
base = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
while os.dup(base) < 1100:
    pass
from warden.supervisor.cli import main
main(["run", "-q", "--timeout", "0.5", "--", "/bin/sleep", "60"])
"""


def test_warden_run_supervises_when_every_new_fd_is_above_1024() -> None:
    """`warden run`'s own wait loop (channel guard + sandbox fds) uses poll too.

    (A subprocess: `warden run` ends its process with the program's exit code.)"""
    r = subprocess.run([PYTHON, "-c", _RUN_WITH_HIGH_FDS], env=supervisor_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 128 + signal.SIGKILL, r.stderr
