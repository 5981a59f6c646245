"""The reference sandbox every benchmark compares with: bwrap running /bin/true.

One definition, so the run and supervisor benchmarks time the same bwrap
(every namespace, die-with-parent, new session, the host's /usr and /lib*
read-only, fresh /proc, /dev and /tmp), optionally under a seccomp filter.
"""

from __future__ import annotations

import os


def bwrap_true_argv(seccomp_fd: int | None = None) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return [*argv, "/bin/true"]
