"""Dropping every privilege before exec: ids, capabilities in all five sets, no_new_privs.

Runs in the child after the mounts (which need the namespace's
capabilities). Order matters: the bounding set and securebits need
CAP_SETPCAP, so they go first; then supplementary groups, gid and uid; then
the permitted/effective/inheritable sets are cleared with capset and the
ambient set emptied; finally no_new_privs, so no setuid binary or file
capability can hand anything back.
"""

from __future__ import annotations

import ctypes
import os

from warden.errors import ChildFailed
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.errors import SandboxError

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED (without
# KEEP_CAPS), SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock bit.
SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80


class CapsError(SandboxError, ChildFailed, OSError):
    """A privilege could not be dropped."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def parent_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return 40


def _as_caps_error(what: str, e: OSError) -> CapsError:
    return CapsError(e.errno or 0, f"{what}: {os.strerror(e.errno or 0)}")


def child_drop_bounding_set(last: int) -> None:
    for cap in range(last + 1):
        try:
            _sys.prctl(_sys.PR_CAPBSET_DROP, cap)
        except OSError as e:
            raise _as_caps_error(f"dropping capability {cap} from the bounding set", e) from None


def child_lock_securebits() -> None:
    try:
        _sys.prctl(_sys.PR_SET_SECUREBITS, SECUREBITS)
    except OSError as e:
        raise _as_caps_error("locking securebits", e) from None


def child_set_ids(uid: int, gid: int, drop_groups: bool) -> None:
    try:
        if drop_groups:
            _sys.setgroups_empty()
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as e:
        raise _as_caps_error(f"switching to uid/gid {uid}/{gid}", e) from None


def child_clear_capabilities() -> None:
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _sys.libc.capset(ctypes.byref(hdr), data) == -1:
        err = ctypes.get_errno()
        raise CapsError(err, f"capset: {os.strerror(err)}")
    _sys.prctl(_sys.PR_CAP_AMBIENT, _sys.PR_CAP_AMBIENT_CLEAR_ALL)


def child_no_new_privs() -> None:
    try:
        _sys.prctl(_sys.PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        raise _as_caps_error("setting no_new_privs", e) from None
