"""What `warden run` tells the user after a seccomp kill: the call with its
arguments decoded where they are known, and how to allow it.

The loop users run to write a profile is: run, read which call was refused,
allow it, run again. So the kill's report names the call as a person reads it
(`socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)`), the profile line that allows
it, and the command that starts a profile of one's own from the one in use.
"""

from __future__ import annotations

from warden.supervisor.sandbox.calltext import call_text
from warden.supervisor.sandbox.status import Complaint, Violation

__all__ = ["allow_all", "call_text", "how_to_allow"]

def _own_name(profile: str) -> str:
    """The name suggested for a profile of one's own that starts from `profile`."""
    return "my-" + profile.rsplit("/", 1)[-1].removesuffix(".toml")


def how_to_allow(v: Violation, profile: str) -> list[str]:
    """The lines after a kill: the rule that allows the call, and the command that
    starts a profile of one's own from `profile`."""
    if v.syscall.startswith("unknown(") or v.arch not in ("x86_64", "native"):
        return [f"{v.syscall} on {v.arch} is not a call a profile can allow by name; "
                "see docs/profiles.md (architectures)"]
    mine = _own_name(profile)
    return [
        f'to allow it, add "{v.syscall}" to the allow list of a profile\'s [seccomp] table:',
        f"    warden profile new {mine} --from {profile}   # writes profiles/{mine}.toml",
        f'    then set allow = ["{v.syscall}"] in it and run with -p profiles/{mine}.toml',
        f"(warden profile explain {profile} {v.syscall} shows which rule refused it)",
    ]


def allow_all(complaints: tuple[Complaint, ...], profile: str) -> list[str]:
    """After --complain: the allow list that lets every named call through, and how
    to start the profile that holds it."""
    names = sorted({c.syscall for c in complaints
                    if not c.syscall.startswith("unknown(") and c.arch in ("x86_64", "native")})
    others = sorted({f"{c.syscall} ({c.arch})" for c in complaints
                     if c.syscall.startswith("unknown(") or c.arch not in ("x86_64", "native")})
    lines = []
    if names:
        mine = _own_name(profile)
        listed = ", ".join(f'"{n}"' for n in names)
        lines += [f"to allow them: warden profile new {mine} --from {profile}, then in "
                  f"profiles/{mine}.toml set", f"    allow = [{listed}]"]
    if others:
        lines.append("not allowable by name (another architecture or an unknown number): "
                     + ", ".join(others))
    return lines
