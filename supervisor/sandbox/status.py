"""How a sandboxed child ended: one outcome, the first cause winning, as a frozen record.

The record is what `warden run --json-status` prints and what the API's
`Sandbox.wait()` returns. Every field is sourced by the supervisor (kernel
wait status, seccomp user-notify, cgroup counters), never by the child.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import asdict, field
from typing import Any

from warden.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_SETUP

# Frozen dataclasses processed on first use (warden.profiles.records): a run that ends
# well never makes the violation, complaint and setup-failure classes' methods.
from warden.profiles.records import LazyRecord, lazy_frozen


class Outcome(enum.Enum):
    OK = "ok"
    EXITED = "exited"
    SIGNALED = "signaled"
    SECCOMP_VIOLATION = "seccomp_violation"
    BAD_MESSAGE = "bad_message"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    KILLED = "killed"
    SETUP_ERROR = "setup_error"


# Exit codes of `warden run` for outcomes where the supervisor ended the child:
# defined once, in warden.errors, and named here for this layer's callers.
__all__ = ["EXIT_NOT_EXECUTABLE", "EXIT_NOT_FOUND", "EXIT_SETUP", "Outcome", "SetupFailure",
           "Status", "Violation"]


@lazy_frozen
class Violation(LazyRecord):
    """A system call the seccomp filter refused, as the kernel reported it to the supervisor."""

    syscall: str  # name, or "unknown(NR)"
    nr: int
    arch: str  # "x86_64", "i386", "x32", ... or hex
    args: tuple[int, ...]
    pid: int  # host pid of the calling process
    # The path argument of a path-taking call (open, openat, execve, stat, ...), as the
    # caller passed it, read from its memory before the kill; None for other calls.
    path: str | None = None


@lazy_frozen
class Complaint(LazyRecord):
    """A call the filter would have killed for, answered with EPERM under --complain:
    the first time it was made, and how many times in all."""

    syscall: str
    nr: int
    arch: str
    args: tuple[int, ...]  # of the first such call
    count: int


@lazy_frozen
class SetupFailure(LazyRecord):
    """A setup step in the child that the kernel refused."""

    step: str
    errno: int
    message: str


@lazy_frozen
class Status(LazyRecord):
    """How a sandbox ended: one outcome, with the facts behind it."""

    outcome: Outcome
    exit_code: int  # what `warden run` exits with
    returncode: int | None = None  # program's own exit code, when it exited
    signal: int | None = None  # signal that ended the program, when signaled
    reason: str = ""  # human sentence: bad message reason, kill reason, setup error
    violation: Violation | None = None
    setup: SetupFailure | None = None
    wall_time: float = 0.0
    cpu_time: float = 0.0
    peak_memory_bytes: int | None = None
    limits_mechanism: str = ""  # "cgroup-v2", "cgroup-v1" or "rlimit"
    landlock_abi: int = 0  # 0: not applied (kernel lacks Landlock)
    # Confinement this sandbox went without, each with why: an explicit opt-out
    # (--share-net) or what the kernel lacks (Landlock). Never silent.
    weakened: tuple[str, ...] = field(default_factory=tuple)
    # Under --complain: every refused call, in the order first made (see Complaint).
    complaints: tuple[Complaint, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome.value
        if self.signal is not None:
            d["signal_name"] = signal.Signals(self.signal).name
        d["weakened"] = list(self.weakened)
        if self.violation is not None:
            d["violation"]["args"] = list(self.violation.args)
        d["complaints"] = [{**asdict(c), "args": list(c.args)} for c in self.complaints]
        return d

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> str:
        """One line for humans (stderr of `warden run`)."""
        o = self.outcome
        if o is Outcome.OK:
            return "ok"
        if o is Outcome.EXITED:
            return f"exited with code {self.returncode}"
        if o is Outcome.SIGNALED and self.signal is not None:
            return f"killed by signal {signal.Signals(self.signal).name}"
        if o is Outcome.SECCOMP_VIOLATION and self.violation is not None:
            from warden.supervisor.sandbox.calltext import call_text  # only when killed

            return f"seccomp violation: {call_text(self.violation)}; sandbox killed"
        return f"{o.value}: {self.reason}" if self.reason else o.value
