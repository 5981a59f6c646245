"""Why user namespaces are unavailable, in one sentence with the fix.

Called only after creating a user namespace failed, so a working machine
pays nothing. Each known cause is checked against the running kernel's own
settings; the first that explains the failure is reported. warden never
falls back to weaker confinement on its own.
"""

from __future__ import annotations

import errno
import os

from warden.errors import EXIT_SETUP, Unavailable
from warden.supervisor.sandbox.errors import SandboxError


class PreflightError(SandboxError, Unavailable, RuntimeError):
    """User namespaces cannot be created here; the message says why and how to fix it."""

    exit_code = EXIT_SETUP


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _in_container() -> bool:
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return True
    return any(k in (_read("/proc/1/cgroup") or "") for k in ("docker", "kubepods", "containerd"))


def explain(err: int) -> str:
    """The sentence for a failed clone(CLONE_NEWUSER) with errno `err`."""
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        return ("user namespaces are disabled: user.max_user_namespaces is 0; "
                "enable them with: sysctl -w user.max_user_namespaces=15000")
    if err == errno.ENOSPC:
        return ("the user namespace limit is reached (user.max_user_namespaces, or the nesting "
                "depth of 32); raise it with: sysctl -w user.max_user_namespaces=15000")
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0" and os.geteuid() != 0:
        return ("unprivileged user namespaces are disabled: kernel.unprivileged_userns_clone is "
                "0; enable them with: sysctl -w kernel.unprivileged_userns_clone=1")
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1" \
            and os.geteuid() != 0:
        return ("AppArmor restricts unprivileged user namespaces "
                "(kernel.apparmor_restrict_unprivileged_userns=1); allow them with: sysctl -w "
                "kernel.apparmor_restrict_unprivileged_userns=0, or give warden an AppArmor "
                "profile with the 'userns,' rule")
    seccomp = ""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("Seccomp:"):
            seccomp = line.split()[1]
    if err == errno.EPERM and seccomp not in ("", "0"):
        hint = " (for Docker: --security-opt seccomp=unconfined, or a profile allowing clone " \
               "with CLONE_NEWUSER)" if _in_container() else ""
        return ("this process runs under a seccomp filter that refuses to create user "
                f"namespaces; run warden without that filter{hint}")
    if err == errno.EPERM and _in_container():
        return ("the container runtime does not allow creating user namespaces; run the "
                "container with user namespaces allowed (e.g. Docker --security-opt "
                "seccomp=unconfined --security-opt apparmor=unconfined)")
    if err == errno.EINVAL:
        return ("the kernel refused to create a user namespace (EINVAL: built without "
                "CONFIG_USER_NS, or the process is chrooted); use a kernel with user namespaces")
    return (f"creating a user namespace failed ({errno.errorcode.get(err, err)}: "
            f"{os.strerror(err)}); check user.max_user_namespaces and any LSM policy")
