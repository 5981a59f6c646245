"""Positions of tables, keys and array elements in TOML source text.

tomllib returns plain values with no positions, so this small scanner walks
the same text once and records, for every key path, where its key and its
value start. Paths look like ("seccomp", "allow", 2) or
("seccomp", "rules", 0, "action"): array elements and [[array-of-tables]]
entries are addressed by index. It assumes the text already parsed with
tomllib, so it never has to report syntax errors itself.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable

Path = tuple[Hashable, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class Locator:
    """Maps key paths to (line, column), both 1-based."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines()
        self._starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                self._starts.append(i + 1)
        self.keys: dict[Path, int] = {}
        self.values: dict[Path, int] = {}
        self._aot: dict[Path, int] = {}
        self._i = 0
        self._scan()

    # ---- lookups -------------------------------------------------------
    def position(self, offset: int) -> tuple[int, int]:
        row = bisect.bisect_right(self._starts, offset) - 1
        return row + 1, offset - self._starts[row] + 1

    def source_line(self, line: int) -> str:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""

    def key(self, path: Path) -> tuple[int, int]:
        """Where the key of `path` is written (or its nearest written ancestor)."""
        return self._find(path, self.keys, self.values)

    def value(self, path: Path) -> tuple[int, int]:
        """Where the value of `path` starts (or its nearest written ancestor)."""
        return self._find(path, self.values, self.keys)

    def _find(self, path: Path, first: dict[Path, int], second: dict[Path, int]) -> tuple[int, int]:
        p = tuple(path)
        while p:
            for table in (first, second):
                if p in table:
                    return self.position(table[p])
            p = p[:-1]
        return (1, 1)

    # ---- scanner -------------------------------------------------------
    def _peek(self, k: int = 0) -> str:
        j = self._i + k
        return self.text[j] if j < len(self.text) else ""

    def _skip_space(self, newlines: bool) -> None:
        while self._i < len(self.text):
            c = self.text[self._i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._i += 1
            elif c == "#":
                while self._i < len(self.text) and self.text[self._i] != "\n":
                    self._i += 1
            else:
                return

    def _resolve(self, path: Path) -> Path:
        """Replace each array-of-tables prefix with its latest element."""
        out: list[Hashable] = []
        for part in path:
            out.append(part)
            count = self._aot.get(tuple(out))
            if count is not None:
                out.append(count - 1)
        return tuple(out)

    def _key_part(self) -> str:
        c = self._peek()
        if c in "\"'":
            start = self._i
            self._skip_string()
            raw = self.text[start + 1 : self._i - 1]
            return raw if c == "'" else raw.encode().decode("unicode_escape")
        start = self._i
        while self._peek() and self._peek() in _BARE:
            self._i += 1
        return self.text[start : self._i]

    def _dotted_key(self) -> tuple[str, ...]:
        parts = [self._key_part()]
        while True:
            self._skip_space(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._i += 1
            self._skip_space(newlines=False)
            parts.append(self._key_part())

    def _skip_string(self) -> None:
        q = self._peek()
        if self.text.startswith(q * 3, self._i):
            end = self.text.find(q * 3, self._i + 3)
            while q == '"' and end > 0 and self._escaped(end):
                end = self.text.find(q * 3, end + 1)
            self._i = end + 3
            while self._peek() == q:  # up to two quotes may close the content
                self._i += 1
            return
        self._i += 1
        while self._i < len(self.text):
            c = self.text[self._i]
            if c == "\\" and q == '"':
                self._i += 2
                continue
            self._i += 1
            if c == q:
                return

    def _escaped(self, at: int) -> bool:
        n = 0
        while at - 1 - n >= 0 and self.text[at - 1 - n] == "\\":
            n += 1
        return n % 2 == 1

    def _value(self, path: Path) -> None:
        self.values.setdefault(path, self._i)
        c = self._peek()
        if c in "\"'":
            self._skip_string()
        elif c == "[":
            self._i += 1
            index = 0
            while True:
                self._skip_space(newlines=True)
                if self._peek() in ("]", ""):
                    self._i += 1
                    return
                self._value((*path, index))
                index += 1
                self._skip_space(newlines=True)
                if self._peek() == ",":
                    self._i += 1
        elif c == "{":
            self._i += 1
            while True:
                self._skip_space(newlines=False)
                if self._peek() in ("}", ""):
                    self._i += 1
                    return
                start = self._i
                sub = (*path, *self._dotted_key())
                self.keys.setdefault(sub, start)
                self._skip_space(newlines=False)
                self._i += 1  # "="
                self._skip_space(newlines=False)
                self._value(sub)
                self._skip_space(newlines=False)
                if self._peek() == ",":
                    self._i += 1
        else:
            while self._peek() and self._peek() not in ",]}\n#":
                self._i += 1

    def _scan(self) -> None:
        table: Path = ()
        while True:
            self._skip_space(newlines=True)
            if self._i >= len(self.text):
                return
            start = self._i
            if self._peek() == "[":
                double = self._peek(1) == "["
                self._i += 2 if double else 1
                self._skip_space(newlines=False)
                header = self._dotted_key()
                self._i += 2 if double else 1
                if double:
                    parent = self._resolve(header[:-1])
                    full = (*parent, header[-1])
                    self._aot[full] = self._aot.get(full, 0) + 1
                    table = (*full, self._aot[full] - 1)
                else:
                    table = self._resolve(header)
                self.keys.setdefault(table, start)
                self.values.setdefault(table, start)
                continue
            path = (*table, *self._dotted_key())
            self.keys.setdefault(path, start)
            self._skip_space(newlines=False)
            self._i += 1  # "="
            self._skip_space(newlines=False)
            self._value(path)
