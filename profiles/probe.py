"""What the loader learns from the file system, one primitive each, and a record of it.

`warden.profiles.loader` finds and reads profile files only through these
functions. While a Trace is active it records every answer it got: each
search-path candidate asked about (present or not), and each file read (the
path it was named by, the real path that resolved to, a digest of the bytes).
The parsed-profile cache (`warden.profiles.cache`) stores that record beside
the profile and, before it uses the profile again, asks the same functions
the same questions: one answer different (a file edited, a profile newly
created earlier in the search path, a link retargeted) and the cache entry is
not used. Imports nothing but os, so a cache hit does not load the parser.
"""

from __future__ import annotations

import os

try:  # CPython's built-in module: `import hashlib` loads OpenSSL first (~2 ms)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other interpreters
    from hashlib import blake2b

# The active record: a list of [kind, *question, answer] entries, or None.
_trace: list[list[object]] | None = None


def is_file(path: str) -> bool:
    """Like Path.is_file, but a directory we may not search counts as absent."""
    try:
        answer = os.path.isfile(path)
    except (OSError, ValueError):
        answer = False
    if _trace is not None:
        _trace.append(["file", path, answer])
    return answer


def real_path(path: str) -> str:
    """os.path.realpath (as Path.resolve does), recorded."""
    answer = os.path.realpath(path)
    if _trace is not None:
        _trace.append(["real", path, answer])
    return answer


# No profile comes near this (the largest built-in is 12K; an inline data file may
# hold 1M): a bigger file is not read at all, so a sparse file of many gigabytes
# left where a profile is looked for cannot exhaust the supervisor's memory.
MAX_PROFILE_BYTES = 16 << 20


class NotAProfileFile(OSError):
    """A profile path that names no regular file of a sane size; str() is the sentence."""

    def __str__(self) -> str:
        return str(self.strerror)


def _too_big(real: str) -> NotAProfileFile:
    import errno

    return NotAProfileFile(errno.EFBIG, f"{real} is larger than {MAX_PROFILE_BYTES >> 20}M, "
                           "which no profile is")


def read(path: str) -> tuple[str, bytes]:
    """(real path, content) of a profile file; OSError as open() raises it.

    Links on the way are followed (profiles are often linked into place), but what
    is opened is the real path, with O_NOFOLLOW (a link swapped in since fails),
    O_NONBLOCK and O_NOCTTY (a FIFO, a tty or a blocking proc file cannot stall
    the supervisor), and only a regular file of at most MAX_PROFILE_BYTES is read,
    through that one fd."""
    import errno
    import stat

    real = os.path.realpath(path)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAProfileFile(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL,
                                  f"{real} is not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:  # known before reading a byte
            raise _too_big(real)
        chunks: list[bytes] = []
        total = 0  # and counted while reading: a file may grow after the fstat
        while total <= MAX_PROFILE_BYTES and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_PROFILE_BYTES:
            raise _too_big(real)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if _trace is not None:
        _trace.append(["read", path, real, digest(data)])
    return real, data


def digest(data: bytes) -> str:
    return blake2b(data, digest_size=32).hexdigest()


class Trace:
    """`with Trace() as t:` records what the loader asked in `t.entries`."""

    def __init__(self) -> None:
        self.entries: list[list[object]] = []
        self._outer: list[list[object]] | None = None

    def __enter__(self) -> Trace:
        global _trace
        self._outer, _trace = _trace, self.entries
        return self

    def __exit__(self, *_exc: object) -> None:
        global _trace
        _trace = self._outer


def still_true(entries: object) -> bool:
    """True if asking every recorded question again gets the recorded answer."""
    if not isinstance(entries, list):
        return False
    for e in entries:
        if not isinstance(e, list) or not e:
            return False
        try:
            if e[0] == "file" and len(e) == 3:
                if is_file(str(e[1])) is not e[2]:
                    return False
            elif e[0] == "real" and len(e) == 3:
                if os.path.realpath(str(e[1])) != e[2]:
                    return False
            elif e[0] == "read" and len(e) == 4:
                real, data = read(str(e[1]))
                if real != e[2] or digest(data) != e[3]:
                    return False
            else:
                return False
        except OSError:
            return False
    return True


def note(entry: list[object]) -> None:
    """Record an answer the loader got by other means (the same kinds as above)."""
    if _trace is not None:
        _trace.append(entry)
