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


def read(path: str) -> tuple[str, bytes]:
    """(real path, content) of a profile file; OSError as open() raises it."""
    real = os.path.realpath(path)
    with open(real, "rb") as f:
        data = f.read()
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
