"""The fast path of spawn(): what the init resets for the program, whatever the parent holds."""

from __future__ import annotations

import signal

from tests.sandbox.sandbox_util import run


def test_the_program_starts_with_no_signal_ignored_that_the_parent_ignores() -> None:
    # The init reads the ignored set from the kernel (SigIgn) and resets each to its
    # default: an ignored disposition would otherwise survive exec into the program.
    saved = {sig: signal.signal(sig, signal.SIG_IGN)
             for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGRTMIN + 3)}
    try:
        r = run(["/bin/grep", "-E", "^Sig(Ign|Blk):", "/proc/self/status"])
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
    assert r.status.outcome.value == "ok", r.status
    assert r.out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
