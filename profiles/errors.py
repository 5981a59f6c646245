"""ProfileError: the profiles layer's base, raised for every mistake in a profile.

It prints like a compiler diagnostic (minijail's parser errors are the model):

    profiles/mine.toml:7:12: error: unknown system call "opne" (did you mean "open"?)
        allow = ["opne"]
                 ^
      included from profiles/top.toml:2:13

It is an `InvalidInput` (and so a `WardenError`): what the caller gave is wrong,
and the message says where. The layer's narrower errors (`bpf.BpfError`,
`constants.ConstantError`) are ProfileErrors too. This module imports nothing
of warden's but warden.errors, like the rest of the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from warden.errors import InvalidInput


class ProfileError(InvalidInput):
    """A profile could not be read, parsed, resolved or compiled.

    Attributes: `file` ("" when no file is involved), `line` and `column`
    (1-based; 0 when unknown),
    `source_line` (the text of that line, or ""), `message`, `expected`
    (what would have been valid, or None) and `include_chain` (where this file
    was pulled in, innermost first, as "file:line:col" strings).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str = "",
        line: int = 0,
        column: int = 0,
        source_line: str = "",
        expected: str | None = None,
        include_chain: Sequence[str] = (),
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.source_line = source_line
        self.expected = expected
        self.include_chain = tuple(include_chain)
        super().__init__(str(self))

    def with_chain(self, via: str) -> ProfileError:
        """The same error, one more "included from" level out."""
        return ProfileError(
            self.message,
            file=self.file,
            line=self.line,
            column=self.column,
            source_line=self.source_line,
            expected=self.expected,
            include_chain=(*self.include_chain, via),
        )

    @property
    def location(self) -> str:
        """"file:line:col", or just the file, or "warden" when no file is involved."""
        if not self.file:
            return "warden"
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file

    def __str__(self) -> str:
        text = f"{self.location}: error: {self.message}"
        if self.expected:
            text += f" (expected {self.expected})"
        lines = [text]
        if self.source_line:
            lines.append("    " + self.source_line.rstrip("\n"))
            if self.column:
                # Tabs keep their width so the caret lines up under them.
                lead = self.source_line[: self.column - 1]
                pad = "".join("\t" if c == "\t" else " " for c in lead)
                lines.append("    " + pad + "^")
        lines.extend(f"  included from {via}" for via in self.include_chain)
        return "\n".join(lines)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.message, self.__dict__, type(self)))


def _rebuild(message: str, state: dict[str, object],
             cls: type[ProfileError] = ProfileError) -> ProfileError:
    err = cls.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, str(err))
    return err
