"""What a sandbox may ask the broker for, and the record of every answer.

Parent, outside the sandbox, with the supervisor's privilege. A `Policy` is
the two rule sets of one sandbox (`paths.PathPolicy`, `addresses.AddressPolicy`)
and the `Auditor` that records each decision taken by them. Both brokers (the
explicit ipc interface, explicit.py, and the transparent seccomp one,
transparent.py) decide through the same `Policy`, so a path or an address is
judged by one rule whichever way the child asked.

A decision is a `Decision`: allowed or refused, the errno a refusal is
answered with, and the rule that decided (None when no rule names the
request). Every one becomes an `AuditRecord`, handed to the embedder's
callback and logged on the logger "warden.broker" (what the child sent is
escaped and capped first: a record must not let a child forge log lines or
grow the log without bound).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable
from typing import Literal

from warden.supervisor.broker.addresses import AddressPolicy, AddressRule
from warden.supervisor.broker.decision import Decision, Refused, shown
from warden.supervisor.broker.paths import PathPolicy, PathRule

logger = logging.getLogger("warden.broker")

__all__ = ["AuditRecord", "Auditor", "Decision", "Policy", "Refused", "shown"]

@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """One decision of the broker: which sandbox asked, what, how (explicit or
    transparent), the answer and the rule that gave it."""

    sandbox: str
    kind: Literal["open", "connect"]
    via: Literal["explicit", "transparent"]
    request: str  # escaped, capped: shown() of what the child sent
    decision: Literal["allowed", "refused", "unnamed"]
    rule: str | None
    errno: int
    reason: str

    def __str__(self) -> str:
        err = f" ({errno.errorcode.get(self.errno, self.errno)})" if self.errno else ""
        return (f"broker {self.via} {self.kind} by {self.sandbox}: \"{self.request}\" "
                f"{self.decision}{err} by rule {self.rule or '(none)'}: {self.reason}")


class Auditor:
    """Makes and delivers the audit records of one sandbox."""

    def __init__(self, sandbox: str,
                 on_record: Callable[[AuditRecord], None] | None = None) -> None:
        self.sandbox = sandbox
        self._on_record = on_record

    def record(self, kind: Literal["open", "connect"], via: Literal["explicit", "transparent"],
               request: str | bytes, decision: Decision, *, unnamed: bool = False) -> AuditRecord:
        rec = AuditRecord(self.sandbox, kind, via, shown(request),
                          "allowed" if decision.allowed else "unnamed" if unnamed else "refused",
                          decision.rule, decision.errno, decision.reason)
        # A request no rule names is the sandbox's business (it may be answered by the
        # sandbox's own call): debug, not a warning for each file a program looks at.
        level = logging.INFO if decision.allowed else logging.DEBUG if unnamed else logging.WARNING
        logger.log(level, "%s", rec)
        if self._on_record is not None:
            try:
                self._on_record(rec)
            except Exception:  # the embedder's hook must not stop the broker
                logger.exception("the broker's audit callback raised")
        return rec


class Policy:
    """The brokered paths and addresses of one sandbox, and its auditor.

    Made in the parent before the sandbox starts: each path rule's directory is
    opened (and held) now, each host name resolved now, so a bad rule fails
    before a process exists. `close()` releases the directory fds."""

    def __init__(self, paths: PathPolicy, addresses: AddressPolicy, auditor: Auditor) -> None:
        self.paths = paths
        self.addresses = addresses
        self.auditor = auditor

    @classmethod
    def build(cls, sandbox: str, *, paths: list[PathRule] | tuple[PathRule, ...] = (),
              addresses: list[AddressRule] | tuple[AddressRule, ...] = (),
              on_record: Callable[[AuditRecord], None] | None = None) -> Policy:
        path_policy = PathPolicy(paths)
        try:
            address_policy = AddressPolicy(addresses)
        except BaseException:
            path_policy.close()
            raise
        return cls(path_policy, address_policy, Auditor(sandbox, on_record))

    def close(self) -> None:
        self.paths.close()

    def __enter__(self) -> Policy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
