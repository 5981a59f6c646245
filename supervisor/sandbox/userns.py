"""The child's identity and its user namespace's own limits.

Inside its user namespace the workload is uid/gid 1000 (INNER_ID), never 0:
0 is not even mapped, so nothing in the sandbox can become root of it.
Outside, that id is the sandbox's outer id (ids.py): allocated per sandbox
as root, or from the ranges /etc/subuid and /etc/subgid grant an ordinary
user, else the invoking user's own id. Who writes the maps:

- root: the parent (mapping another id takes CAP_SETUID in the parent
  namespace); the child waits for them;
- an ordinary user with subordinate ids: the parent, through the setuid
  helpers newuidmap/newgidmap, once the child says it is ready for them
  (the helpers check that the caller owns the target, which they see only
  once the child is dumpable);
- an ordinary user without: the child itself (the one mapping the kernel
  allows it), so the parent's own dumpability never stands in the way.

Then, while it still holds its namespace's capabilities, the init lowers the
namespace's own limits in /proc/sys/user (which always shows the writer's
own user namespace, and which CAP_SYS_RESOURCE there may lower): inotify
instances and watches to small numbers, fanotify and every kind of new
namespace to none, so the kernel itself refuses nested namespaces, whatever
the seccomp filter allows. The kernel checks these limits at every level
up the namespace chain, so a sandbox can never take more than this of its
owner's budget.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from warden.errors import Unavailable
from warden.supervisor.sandbox.errors import SandboxError

# The workload's uid/gid inside its user namespace: an ordinary user, never 0.
INNER_ID = 1000

# /proc/sys/user/<name> of the sandbox's user namespace, lowered from INT_MAX
# (what the kernel gives a new namespace). Programs rarely need more than a
# few inotify instances; fanotify and nested namespaces not at all (a profile
# that needs them, such as the zygote's, raises them through the spec).
DEFAULT_LIMITS: dict[str, int] = {
    "max_inotify_instances": 16,
    "max_inotify_watches": 8192,
    "max_fanotify_groups": 0,
    "max_fanotify_marks": 0,
    "max_user_namespaces": 0,
    "max_pid_namespaces": 0,
    "max_net_namespaces": 0,
    "max_mnt_namespaces": 0,
    "max_ipc_namespaces": 0,
    "max_uts_namespaces": 0,
    "max_cgroup_namespaces": 1,  # the init's own, made after these are set (cgroupns step)
    "max_time_namespaces": 0,
}


class UserNsError(SandboxError, Unavailable, OSError):
    """Writing the id maps failed."""


def parent_limits(overrides: Iterable[tuple[str, int]]) -> tuple[tuple[bytes, bytes], ...]:
    """(path, value) pairs for the init to write (parent side, before fork)."""
    values = dict(DEFAULT_LIMITS)
    values.update(overrides)
    return tuple((b"/proc/sys/user/" + k.encode(), b"%d" % v) for k, v in values.items())


# Set only once the new root is built: the mount step's clones of bind sources
# (open_tree OPEN_TREE_CLONE in the child) each make an anonymous mount namespace,
# which this limit counts.
AFTER_MOUNTS = b"/proc/sys/user/max_mnt_namespaces"


def child_limits(limits: tuple[tuple[bytes, bytes], ...]) -> tuple[int, bytes] | None:
    """Child side, in the new user namespace with its capabilities: lower its limits.
    A limit this kernel does not have (ENOENT: e.g. no fanotify) is skipped.

    The mount-namespace limit is only opened here (the host's /proc is still the one
    mounted): returns (fd, value) for child_mount_limit() after the mount step."""
    deferred = None
    for path, value in limits:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        if path == AFTER_MOUNTS:
            deferred = (fd, value)
            continue
        _write_limit(fd, path, value)
    return deferred


def child_mount_limit(deferred: tuple[int, bytes] | None) -> None:
    """Child side, after the mount step: write the limit child_limits() held back."""
    if deferred is None:
        return
    fd, value = deferred
    _write_limit(fd, AFTER_MOUNTS, value)


def _write_limit(fd: int, path: bytes, value: bytes) -> None:
    """Write one limit through its open fd, then close it; the error names it."""
    try:
        os.write(fd, value)
    except OSError as e:
        raise UserNsError(e.errno or errno.EIO,
                          f"{path.decode()} = {value.decode()}: {e.strerror}") from None
    finally:
        os.close(fd)


def parent_maps(pid: int, uid: int, gid: int) -> None:
    """Parent side (root): map the init's INNER_ID to the sandbox's outer (uid, gid).
    With CAP_SETGID here, setgroups stays allowed (the init drops its groups)."""
    write_maps(pid, uid, gid, deny_setgroups=False)


def child_maps(uid: int, gid: int) -> None:
    """Child side (an ordinary user's sandbox, mapping its own uid): the init maps
    itself, setgroups denied first as the kernel requires without CAP_SETGID."""
    write_maps("self", uid, gid, deny_setgroups=True)


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
