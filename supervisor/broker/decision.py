"""One answer of the broker (allowed, or refused with an errno, and the rule that
gave it): shared by the rule sets (paths.py, addresses.py) and the audit (policy.py)."""

from __future__ import annotations

import dataclasses
import errno

# How much of a request a record keeps: enough to read, too little to flood a log.
_SHOWN_MAX = 500


@dataclasses.dataclass(frozen=True)
class Decision:
    """One answer: `allowed`, or refused with `errno`; `rule` is the rule that
    decided, as written (None: no rule names the request); `reason` says why."""

    allowed: bool
    errno: int = 0
    rule: str | None = None
    reason: str = ""

    @classmethod
    def allow(cls, rule: str, reason: str = "allowed") -> Decision:
        return cls(True, 0, rule, reason)

    @classmethod
    def refuse(cls, err: int, rule: str | None, reason: str) -> Decision:
        return cls(False, err, rule, reason)


class Refused(OSError):
    """A request the policy refused (or could not carry out); `decision` says why."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.errno or errno.EACCES, decision.reason)
        self.decision = decision

    def __str__(self) -> str:
        return self.decision.reason


def shown(value: str | bytes) -> str:
    """`value` as a record may show it: control characters escaped, at most 500 characters."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    out = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return out if len(out) <= _SHOWN_MAX else out[:_SHOWN_MAX] + "..."


