"""The broker: the supervisor opens files and connects sockets for a sandbox, by policy.

Parent, outside the sandbox, with the supervisor's privilege. One `Policy`
per sandbox (path rules held as directory fds, address rules with names
resolved up front, an auditor); two ways for the child to ask:

- explicit.py: the `Broker` ipc interface, for workers that use warden's ipc;
- transparent.py: seccomp user-notify on the open family and connect, for
  unmodified programs.

See docs/broker.md (policy format, audit records, threat analysis).
"""

from warden.supervisor.broker.addresses import AddressPolicy, AddressRule
from warden.supervisor.broker.decision import Decision, Refused
from warden.supervisor.broker.paths import OpenRequest, PathPolicy, PathRule
from warden.supervisor.broker.policy import Auditor, AuditRecord, Policy

__all__ = ["AddressPolicy", "AddressRule", "AuditRecord", "Auditor", "Decision", "OpenRequest",
           "PathPolicy", "PathRule", "Policy", "Refused"]
