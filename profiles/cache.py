"""A per-user cache of compiled and verified seccomp filters.

`compile_policy` checks every filter it builds in our own BPF interpreter
(that check caught a real libseccomp bug), which costs 10-17 ms per compile.
The result depends only on the flattened policy, `kill_as_notify`, the
libseccomp version and native architecture, and warden's compiler, so
`cached_compile` keys a file on a hash of exactly those and keeps the
verified bytes in
$XDG_CACHE_HOME/warden/seccomp (default ~/.cache/warden/seccomp).

Trust rules: the directory must be a real directory owned by this user with
no group/other access (it is created 0700), each file a regular file owned
by this user, mode 0600, written atomically (temporary file + rename). A file
is used only if it names the same key and its digest (BLAKE2b over key and
filter) matches; anything else — missing, unreadable, foreign, corrupted —
means compile and verify as usual, silently. The digest makes a damaged file
harmless; the owner-only directory is what keeps other users out (anyone
who can write as you can edit your profiles too).

Set WARDEN_NO_CACHE=1 to bypass the cache entirely (never read, never written).
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from pathlib import Path

from profiles.model import SeccompPolicy

try:  # CPython's built-in module: `import hashlib` loads OpenSSL first (~2 ms)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other interpreters
    from hashlib import blake2b

MAGIC = b"warden-bpf-cache 2\n"
DISABLE_VAR = "WARDEN_NO_CACHE"
_SOURCES = ("compiler.py", "bpf.py", "syscalls.py", "libseccomp.py", "model.py", "cache.py")


def cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/warden/seccomp (default ~/.cache/warden/seccomp); None without a home."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):
        home = os.environ.get("HOME")
        if not home or not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "warden" / "seccomp"


def enabled() -> bool:
    return os.environ.get(DISABLE_VAR, "") in ("", "0")


@functools.cache
def _toolchain() -> bytes | None:
    """What, besides the policy, decides the filter: libseccomp (version, native
    architecture) and our compiler's code. None if any of it cannot be read."""
    from profiles import libseccomp

    try:
        h = blake2b(MAGIC, digest_size=32)
        major, minor, micro = libseccomp.version()
        h.update(f"libseccomp {major}.{minor}.{micro} arch {libseccomp.native_arch():#x}\n"
                 .encode())
        here = Path(__file__).resolve().parent
        for name in _SOURCES:
            h.update(name.encode() + b"\0" + (here / name).read_bytes())
    except (OSError, AttributeError, RuntimeError):
        return None
    return h.digest()


def policy_key(policy: SeccompPolicy, kill_as_notify: bool) -> str | None:
    """Hash of the flattened policy (rule origins left out) and everything else that
    matters; None when the toolchain cannot be identified (then nothing is cached)."""
    toolchain = _toolchain()
    if toolchain is None:
        return None
    rules = tuple((r.syscall, r.action, r.conditions) for r in policy.rules)
    text = repr((policy.default_action, policy.bad_arch_action, rules, kill_as_notify))
    return blake2b(toolchain + text.encode(), digest_size=32).hexdigest()


def _digest(key: str, code: bytes) -> str:
    return blake2b(key.encode() + b"\n" + code, digest_size=32).hexdigest()


def _open_private_dir(path: Path) -> int | None:
    """An fd for `path` if it is a real directory of ours with no group/other access.

    Later steps work relative to this fd, so the directory checked is the
    one used even if someone renames things around it meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        return None
    return fd


def load(directory: Path, key: str) -> bytes | None:
    """The cached filter for `key`, or None unless every check passes."""
    dfd = _open_private_dir(directory)
    if dfd is None:
        return None
    try:
        fd = os.open(key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & 0o077 or st.st_size > 1 << 20):
            return None
        data = os.read(fd, st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    head, sep, rest = data.partition(b"\n\n")
    lines = head.split(b"\n")
    if not sep or len(lines) != 3 or lines[0] + b"\n" != MAGIC:
        return None
    if lines[1] != key.encode() or len(rest) % 8 or not rest:
        return None
    if lines[2] != _digest(key, rest).encode():
        return None
    return rest


def store(directory: Path, key: str, code: bytes) -> None:
    """Write atomically (0600, in a 0700 directory of ours); give up silently on any problem."""
    try:
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    except OSError:
        return
    dfd = _open_private_dir(directory)
    if dfd is None:
        return
    tmp = f".{key}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + key.encode() + b"\n" + _digest(key, code).encode() + b"\n\n"
                        + code)
            os.replace(tmp, key, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def cached_compile(policy: SeccompPolicy, *, kill_as_notify: bool = False,
                   directory: Path | None = None) -> bytes:
    """Exactly `compile_policy(policy, kill_as_notify=...)`, from the cache when it can be.

    `directory` overrides the cache location (tests); errors in the profile
    raise ProfileError as compile_policy does and are never cached.
    """
    where = directory if directory is not None else cache_dir()
    key = policy_key(policy, kill_as_notify) if enabled() and where is not None else None
    code = load(where, key) if where is not None and key is not None else None
    if code is None:
        from profiles.compiler import compile_policy  # only on a miss: it loads the verifier

        code = compile_policy(policy, kill_as_notify=kill_as_notify)
        if where is not None and key is not None:
            store(where, key, code)
    return code
