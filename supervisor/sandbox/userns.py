"""The child's identity: one unprivileged uid/gid inside, mapped to one unprivileged id outside.

Inside its user namespace the workload is uid/gid 1000 (INNER_ID), never 0:
0 is not even mapped, so nothing in the sandbox can become root of it.
Outside, that id is the invoking user's own uid when warden runs as an
ordinary user (the only mapping the kernel allows it), and a dedicated
unprivileged id (spec.outer_uid/outer_gid) when warden runs as root, so the
kernel's own uid checks keep the child away from root's files and from the
supervisor. As root, the parent writes the maps (mapping another id takes
CAP_SETUID in the parent namespace) and the child waits for them; as an
ordinary user, the child writes its own (the one mapping the kernel allows
it), so the parent's own dumpability never stands in the way.
"""

from __future__ import annotations

import os

from supervisor.sandbox.spec import INNER_ID, SandboxSpec


class UserNsError(OSError):
    """Writing the id maps failed."""


def outer_ids(spec: SandboxSpec) -> tuple[int, int]:
    if os.geteuid() == 0:
        return spec.outer_uid, spec.outer_gid
    return os.geteuid(), os.getegid()


def write_maps(pid: int | str, uid: int, gid: int, *, deny_setgroups: bool) -> None:
    """Map INNER_ID to (uid, gid) for `pid` ("self" for the caller). Without
    CAP_SETGID in the parent namespace, setgroups must be denied first."""
    try:
        if deny_setgroups:
            _write(f"/proc/{pid}/setgroups", b"deny")
        _write(f"/proc/{pid}/uid_map", b"%d %d 1\n" % (INNER_ID, uid))
        _write(f"/proc/{pid}/gid_map", b"%d %d 1\n" % (INNER_ID, gid))
    except OSError as e:
        raise UserNsError(e.errno or 0, f"id maps for pid {pid}: {e.strerror}") from None


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
