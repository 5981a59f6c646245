"""What `warden profile show / explain / diff` report, as plain data.

The CLI prints these; `--json` dumps them unchanged. `explain` judges the
compiled BPF with warden.profiles.bpf and only then looks up which rule produced
that answer, so what it reports is what the kernel will do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from warden.profiles import argwidth, bpf, brokerrules, compiler, constants, syscalls
from warden.profiles.errors import ProfileError
from warden.profiles.model import Profile, SyscallRule
from warden.profiles.parser import format_action

ARCHES = {"x86_64": bpf.AUDIT_ARCH_X86_64, "i386": bpf.AUDIT_ARCH_I386,
          "x32": bpf.AUDIT_ARCH_X86_64}


action_text = format_action


def rule_data(rule: SyscallRule) -> dict[str, Any]:
    return {
        "syscall": rule.syscall,
        "action": action_text(rule.action),
        "conditions": [str(c) for c in rule.conditions],
        "origin": str(rule.origin) if rule.origin else None,
    }


def show(profile: Profile) -> dict[str, Any]:
    pol = profile.seccomp
    code = compiler.compile_policy(pol)
    rules = sorted(pol.rules, key=lambda r: (r.syscall, bool(not r.conditions)))
    return {
        "name": profile.name,
        "source": profile.source,
        "description": profile.description,
        "seccomp": {
            "default_action": action_text(pol.default_action),
            "bad_arch_action": action_text(pol.bad_arch_action),
            "instructions": compiler.instruction_count(code),
            "rules": [rule_data(r) for r in rules],
        },
        "namespaces": asdict(profile.namespaces),
        "filesystem": filesystem_data(profile),
        "limits": asdict(profile.limits),
        "environment": {"keep": list(profile.environment.keep),
                        "set": dict(profile.environment.set)},
        "broker": broker_data(profile),
    }


def filesystem_data(profile: Profile) -> dict[str, Any]:
    """[filesystem] as plain data; a data file with its size in bytes."""
    data = asdict(profile.filesystem)
    data["data_files"] = [{"dest": f.dest, "size": len(f.contents.encode()),
                           "contents": f.contents} for f in profile.filesystem.data_files]
    return data


def broker_data(profile: Profile) -> dict[str, list[str]]:
    """[broker] in the profile's own syntax (read, write, connect)."""
    b = profile.broker
    return {"read": [brokerrules.spelled_path(p) for p in b.paths if not p.write],
            "write": [brokerrules.spelled_path(p) for p in b.paths if p.write],
            "connect": [brokerrules.spelled_address(a.host, a.low, a.high, a.protocol)
                        for a in b.connect]}


def parse_syscall(text: str) -> tuple[str, int]:
    if text.isdigit():
        nr = int(text)
        return syscalls.name_of(nr) or f"#{nr}", nr
    nr_or_none = syscalls.number(text)
    if nr_or_none is None:
        guess = syscalls.suggest(text)
        hint = f' (did you mean "{guess}"?)' if guess else ""
        raise ProfileError(f'unknown system call "{text}"{hint}')
    return text, nr_or_none


def parse_args(texts: Sequence[str]) -> list[int]:
    if len(texts) > 6:
        raise ProfileError("a system call has at most 6 arguments")
    out = []
    for t in texts:
        try:
            out.append(constants.parse_value(t))
        except constants.ConstantError as e:
            raise ProfileError(e.message) from None
    return out


def explain(profile: Profile, syscall: str, args: Sequence[str] = (), *,
            arch: str = "x86_64") -> dict[str, Any]:
    name, nr = parse_syscall(syscall)
    values = parse_args(args)
    if arch not in ARCHES:
        raise ProfileError(f'unknown architecture "{arch}"', expected=", ".join(ARCHES))
    if arch == "x32":
        nr |= syscalls.X32_SYSCALL_BIT
    code = compiler.compile_policy(profile.seccomp)
    ret = bpf.evaluate(code, nr, values, arch=ARCHES[arch])
    got = bpf.action_of(ret)
    notes = _width_notes(profile, code, name, nr, values, ret, arch)
    pol = profile.seccomp
    decided_by: list[dict[str, Any]] = []
    reason: str
    if arch != "x86_64":
        reason = f"foreign architecture {arch}: bad-arch action"
    else:
        rules = [r for r in compiler.deciding_rules(pol, name, values) if r.action == got]
        if rules:
            decided_by = [rule_data(r) for r in rules]
            reason = "rule"
        elif got == pol.default_action:
            reason = "default action"
        else:
            reason = "no rule of the profile gives this answer (compiler bug?)"
    return {
        "profile": profile.name,
        "syscall": name,
        "nr": nr,
        "arch": arch,
        "args": [f"{v:#x}" for v in values],
        "result": bpf.describe(ret),
        "return_value": ret,
        "reason": reason,
        "decided_by": decided_by,
        "notes": notes,
    }


def _width_notes(profile: Profile, code: bytes, name: str, nr: int, values: Sequence[int],
                 ret: int, arch: str) -> list[str]:
    """Where an argument has bits the kernel ignores (warden.profiles.argwidth), say so, and
    check that the filter answers the same for the value the kernel will act on."""
    if arch != "x86_64":
        return []
    notes: list[str] = []
    kernel_values = list(values)
    for i, v in enumerate(values):
        width, what = argwidth.argument(name, i)
        if width < 64 and v >> width:
            kernel_values[i] = v & ((1 << width) - 1)
            notes.append(f"{what} is {width} bits wide: the kernel acts on "
                         f"{kernel_values[i]:#x}, the filter sees {v:#x}")
    if kernel_values != list(values):
        narrow = bpf.evaluate(code, nr, kernel_values, arch=ARCHES[arch])
        if narrow != ret:
            notes.append(f"the filter answers {bpf.describe(narrow)} for {name} with "
                         f"{', '.join(f'{v:#x}' for v in kernel_values)}: profile "
                         f"{profile.name} tests bits the kernel ignores, so the two differ")
    return notes


def _rule_key(r: SyscallRule) -> tuple[str, str, tuple[str, ...]]:
    return (r.syscall, action_text(r.action), tuple(str(c) for c in r.conditions))


def diff(a: Profile, b: Profile) -> dict[str, Any]:
    """Rules and settings only in a (removed), only in b (added), and changed settings."""
    ka = {_rule_key(r): r for r in a.seccomp.rules}
    kb = {_rule_key(r): r for r in b.seccomp.rules}
    settings: list[dict[str, Any]] = []

    def compare(section: str, x: dict[str, Any], y: dict[str, Any]) -> None:
        for key in x.keys() | y.keys():
            va, vb = x.get(key), y.get(key)
            if va == vb:
                continue
            if isinstance(va, list | tuple) and isinstance(vb, list | tuple):
                settings.extend({"setting": f"{section}.{key}", "a": item, "b": None}
                                for item in va if item not in vb)
                settings.extend({"setting": f"{section}.{key}", "a": None, "b": item}
                                for item in vb if item not in va)
            else:
                settings.append({"setting": f"{section}.{key}", "a": va, "b": vb})

    compare("seccomp", {"default_action": action_text(a.seccomp.default_action),
                        "bad_arch_action": action_text(a.seccomp.bad_arch_action)},
            {"default_action": action_text(b.seccomp.default_action),
             "bad_arch_action": action_text(b.seccomp.bad_arch_action)})
    for section in ("namespaces", "limits", "environment"):
        compare(section, asdict(getattr(a, section)), asdict(getattr(b, section)))
    compare("filesystem", filesystem_data(a), filesystem_data(b))
    compare("broker", broker_data(a), broker_data(b))
    return {
        "a": a.name,
        "b": b.name,
        "removed": [rule_data(ka[k]) for k in sorted(ka.keys() - kb.keys())],
        "added": [rule_data(kb[k]) for k in sorted(kb.keys() - ka.keys())],
        "settings": sorted(settings, key=lambda s: str(s["setting"])),
    }
