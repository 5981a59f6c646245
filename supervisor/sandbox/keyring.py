"""Leaving the caller's session keyring behind: a fresh, empty, anonymous one.

Kernel keyrings are not namespaced. A forked process keeps possessing its
parent's session keyring (and through it every key linked there: the host
user's tokens, Kerberos tickets, ...), so /proc/keys and keyctl(KEYCTL_READ)
in a sandbox would show them. Joining a new anonymous session keyring
(keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL), as runc does for a container's
init) drops that possession for this process and everything it forks.
The new keyring counts against its owner's key quota (kernel.keys.maxkeys,
200 for a uid other than root) for as long as the sandbox lives: the sandbox's
init joins it after taking the sandbox's ids (child.py), so it is charged to
the sandbox's own outer uid, never to the supervisor's.

Possession is not the only way to see a key: /proc/keys lists every key
whose owner's uid maps into the reader's user namespace and grants that uid
"view" (add_key's default). An ordinary user's sandbox maps the user's own
uid, so it would still list the user's keys (descriptions, not contents);
`child_mask_proc_keys()` covers /proc/keys and /proc/key-users with /dev/null in
the sandbox's fresh procfs.
"""

from __future__ import annotations

import ctypes
import errno
import os

from warden.supervisor.sandbox import _sys

__all__ = ["child_join_session_keyring", "child_mask_proc_keys"]

_NR_KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
_KEYCTL_JOIN_SESSION_KEYRING = 1


def child_join_session_keyring() -> int:
    """Subscribe this process to a new anonymous session keyring; returns its serial.

    Raises OSError with the kernel's errno (ENOSYS: a kernel without keys,
    where there is nothing to leave behind, is not an error)."""
    ret = int(_sys.libc.syscall(ctypes.c_long(_NR_KEYCTL),
                                ctypes.c_int(_KEYCTL_JOIN_SESSION_KEYRING), None))
    if ret == -1:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:  # a kernel built without CONFIG_KEYS
            return 0
        hint = ("; the uid's key quota is used up (raise kernel.keys.maxkeys)"
                if err == errno.EDQUOT else "")
        raise OSError(err, f"keyctl(KEYCTL_JOIN_SESSION_KEYRING): {os.strerror(err)}{hint}")
    return ret


def child_mask_proc_keys() -> None:
    """Bind /dev/null over /proc/keys and /proc/key-users (in the sandbox's new root,
    mount namespace and procfs; needs CAP_SYS_ADMIN there). Missing ones are skipped."""
    for path in (b"/proc/keys", b"/proc/key-users"):
        try:
            _sys.mount(b"/dev/null", path, None, _sys.MS_BIND)
        except FileNotFoundError:
            continue
