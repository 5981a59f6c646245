"""Generate the parts of docs/profiles.md that must not drift from the code.

The group table and the constant list are written between marker comments;
`python -m warden.profiles.docgen` rewrites them and a test fails if they are stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from warden.profiles import constants, syscalls

DOC = Path(__file__).resolve().parent.parent / "docs" / "profiles.md"
MARKERS = {
    "groups": ("<!-- BEGIN GENERATED GROUPS -->", "<!-- END GENERATED GROUPS -->"),
    "constants": ("<!-- BEGIN GENERATED CONSTANTS -->", "<!-- END GENERATED CONSTANTS -->"),
}


def groups_markdown() -> str:
    lines = [
        "Members in *italics* do not exist on x86_64 and are skipped there; "
        "`@name` members pull in another group. Groups marked (warden) are warden's own; "
        "the rest follow systemd's `SystemCallFilter=` sets.",
        "",
    ]
    for name in sorted(syscalls.GROUPS):
        g = syscalls.GROUPS[name]
        tag = " (warden)" if g.origin == "warden" else ""
        members = []
        for m in sorted(g.members):
            if m.startswith("@"):
                members.append(f"`{m}`")
            elif syscalls.number(m) is None:
                members.append(f"*{m}*")
            else:
                members.append(f"`{m}`")
        lines += [f"#### `{name}`{tag}", "", f"{g.help}.", "", ", ".join(members), ""]
    return "\n".join(lines).rstrip() + "\n"


def constants_markdown() -> str:
    lines = ["| name | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v:#x}` |" for k, v in constants.CONSTANTS.items()]
    lines += ["", "Every errno name Python's `errno` module knows (`EPERM`, `ENOSYS`, "
              "`EACCES`, ...) is accepted in `errno NAME` actions."]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    for key, body in (("groups", groups_markdown()), ("constants", constants_markdown())):
        begin, end = MARKERS[key]
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"{DOC} lacks the markers {begin} ... {end}")
        replacement = f"{begin}\n{body}{end}"
        text = pattern.sub(lambda _m: replacement, text)  # noqa: B023 - used at once
    return text


def main() -> int:
    DOC.write_text(render(DOC.read_text()))
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
