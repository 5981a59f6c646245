"""The OCI / Docker seccomp JSON format, in and out.

Import (`warden profile import`) turns an OCI profile into a warden profile:
- `includes.caps`: warden drops every capability, so a rule that applies
  only with a capability is left out; `excludes.caps` rules apply.
- `includes.arches` / `excludes.arches`: judged for the native arch (amd64);
  `archMap` / `architectures` are ignored: warden filters the native arch
  only and kills every foreign one (x32, i386).
- `includes.minKernel`: judged against the running kernel.
- Calls libseccomp does not know, or that do not exist on this arch, are
  left out. Everything left out is reported as a note.
- Several conditions on the same argument are alternatives (one rule each, as
  runc does); conditions on different arguments must all hold.
Export writes the flattened policy back in the same format. Where warden's
precedence needs it (an unconditional rule beside conditional ones), the
unconditional rule is written with an always-true `>= 0` test so libseccomp
in runc keeps the conditional ones too; import reads that back as
unconditional, so export -> import returns the same rules.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from warden.profiles import argwidth, syscalls
from warden.profiles.errors import ProfileError
from warden.profiles.model import (
    Action,
    ActionKind,
    ArgCondition,
    ArgOp,
    Origin,
    SeccompPolicy,
    SyscallRule,
)
from warden.profiles.parser import format_action

NATIVE_ARCH_NAMES = frozenset({"amd64", "x86_64", "SCMP_ARCH_X86_64"})
_ACTIONS = {
    "SCMP_ACT_ALLOW": ActionKind.ALLOW,
    "SCMP_ACT_KILL": ActionKind.KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ActionKind.KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ActionKind.KILL_PROCESS,
    "SCMP_ACT_TRAP": ActionKind.TRAP,
    "SCMP_ACT_LOG": ActionKind.LOG,
    "SCMP_ACT_NOTIFY": ActionKind.NOTIFY,
    "SCMP_ACT_ERRNO": ActionKind.ERRNO,
}
_OCI_ACTION = {
    ActionKind.ALLOW: "SCMP_ACT_ALLOW",
    ActionKind.KILL_THREAD: "SCMP_ACT_KILL_THREAD",
    ActionKind.KILL_PROCESS: "SCMP_ACT_KILL_PROCESS",
    ActionKind.TRAP: "SCMP_ACT_TRAP",
    ActionKind.LOG: "SCMP_ACT_LOG",
    ActionKind.NOTIFY: "SCMP_ACT_NOTIFY",
    ActionKind.ERRNO: "SCMP_ACT_ERRNO",
}
_OPS = {"SCMP_CMP_NE": ArgOp.NE, "SCMP_CMP_LT": ArgOp.LT, "SCMP_CMP_LE": ArgOp.LE,
        "SCMP_CMP_EQ": ArgOp.EQ, "SCMP_CMP_GE": ArgOp.GE, "SCMP_CMP_GT": ArgOp.GT,
        "SCMP_CMP_MASKED_EQ": ArgOp.MASKED_EQ}
_OCI_OP = {v: k for k, v in _OPS.items()}
EPERM = 1


@dataclass
class Imported:
    policy: SeccompPolicy
    notes: list[str] = field(default_factory=list)


def _kernel_at_least(version: str) -> bool:
    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", text)[:3])

    return parts(os.uname().release) >= parts(version)


def _action(file: str, where: str, name: object, errno_ret: object) -> Action:
    if name not in _ACTIONS:
        raise ProfileError(f"{where}: unsupported action {name!r}", file=file,
                           expected="one of " + ", ".join(_ACTIONS))
    kind = _ACTIONS[str(name)]
    if kind is ActionKind.ERRNO:
        errno = EPERM if errno_ret is None else errno_ret
        if not isinstance(errno, int) or not 0 <= errno <= 4095:
            raise ProfileError(f"{where}: errnoRet must be 0..4095, got {errno!r}", file=file)
        return Action(kind, errno)
    return Action(kind)


def load_oci(text: str, file: str = "<json>") -> Imported:
    """Parse OCI seccomp JSON into a flattened policy plus notes on what was left out."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        lines = text.splitlines()
        raise ProfileError(f"invalid JSON: {e.msg}", file=file, line=e.lineno, column=e.colno,
                           source_line=lines[e.lineno - 1] if 0 < e.lineno <= len(lines) else ""
                           ) from None
    if not isinstance(doc, dict) or "defaultAction" not in doc:
        raise ProfileError("not an OCI seccomp profile (no defaultAction)", file=file)
    default = _action(file, "defaultAction", doc["defaultAction"], doc.get("defaultErrnoRet"))
    rules: list[SyscallRule] = []
    notes: list[str] = []
    for i, entry in enumerate(doc.get("syscalls") or []):
        where = f"syscalls[{i}]"
        names = entry.get("names") or ([entry["name"]] if "name" in entry else [])
        reason = _skip_reason(entry)
        if reason:
            notes.append(f"syscalls[{i}] ({', '.join(names)}): left out, {reason}")
            continue
        action = _action(file, where, entry.get("action"), entry.get("errnoRet"))
        for alternative in _conditions(file, where, entry.get("args") or []):
            for name in names:
                if not syscalls.is_known(name):
                    notes.append(f"syscalls[{i}]: {name}: unknown to libseccomp, left out")
                    continue
                if syscalls.number(name) is None:
                    continue  # another architecture's call
                origin = Origin(file, 0, 0, (f"syscalls[{i}]",))
                # runc compares all 64 bits; test only those the kernel reads
                narrowed = argwidth.as_kernel_reads(name, alternative)
                if narrowed != [alternative]:
                    notes.append(f"syscalls[{i}]: {name}: a test on a 32-bit argument is "
                                 "written as masked tests of the bits the kernel reads")
                rules.extend(SyscallRule(name, action, conds, origin) for conds in narrowed)
    return Imported(SeccompPolicy(default_action=default, rules=_dedupe(rules)), notes)


def _dedupe(rules: Sequence[SyscallRule]) -> tuple[SyscallRule, ...]:
    seen: set[tuple[str, Action, tuple[ArgCondition, ...]]] = set()
    out = []
    for r in rules:
        key = (r.syscall, r.action, r.conditions)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return tuple(out)


def _skip_reason(entry: dict[str, object]) -> str | None:
    inc = entry.get("includes") or {}
    exc = entry.get("excludes") or {}
    assert isinstance(inc, dict) and isinstance(exc, dict)
    if inc.get("caps"):
        return f"needs {', '.join(inc['caps'])} and warden drops every capability"
    if inc.get("arches") and not NATIVE_ARCH_NAMES & set(inc["arches"]):
        return f"only for {', '.join(inc['arches'])}"
    if exc.get("arches") and NATIVE_ARCH_NAMES & set(exc["arches"]):
        return "excluded on amd64"
    if inc.get("minKernel") and not _kernel_at_least(str(inc["minKernel"])):
        return f"needs kernel {inc['minKernel']}, running {os.uname().release}"
    return None


def _conditions(file: str, where: str, args: list[dict[str, object]]
                ) -> list[tuple[ArgCondition, ...]]:
    by_index: dict[int, list[ArgCondition]] = {}
    for a in args:
        index, op = a.get("index"), a.get("op")
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise ProfileError(f"{where}: argument index must be 0..5, got {index!r}", file=file)
        if op not in _OPS:
            raise ProfileError(f"{where}: unknown comparison {op!r}", file=file,
                               expected="one of " + ", ".join(_OPS))
        value = int(a.get("value") or 0) & 0xFFFFFFFFFFFFFFFF  # type: ignore[call-overload]
        two = int(a.get("valueTwo") or 0) & 0xFFFFFFFFFFFFFFFF  # type: ignore[call-overload]
        if _OPS[str(op)] is ArgOp.MASKED_EQ:
            cond = ArgCondition(index, ArgOp.MASKED_EQ, two, value)
        else:
            cond = ArgCondition(index, _OPS[str(op)], value)
        by_index.setdefault(index, []).append(cond)
    if not by_index:
        return [()]
    # A lone ">= 0" is always true: the unconditional rule export wrote.
    if len(args) == 1 and next(iter(by_index.values()))[0].op is ArgOp.GE and \
            next(iter(by_index.values()))[0].value == 0:
        return [()]
    combos = itertools.product(*by_index.values())
    return [tuple(sorted(c, key=lambda x: x.index)) for c in combos]


def dump_oci(policy: SeccompPolicy) -> str:
    """The policy as OCI seccomp JSON (architectures: the native one only)."""
    doc: dict[str, object] = {"defaultAction": _OCI_ACTION[policy.default_action.kind]}
    if policy.default_action.kind is ActionKind.ERRNO:
        doc["defaultErrnoRet"] = policy.default_action.errno
    doc["architectures"] = ["SCMP_ARCH_X86_64"]
    by_call: dict[str, list[SyscallRule]] = {}
    for r in policy.rules:
        by_call.setdefault(r.syscall, []).append(r)
    groups: dict[tuple[Action, tuple[ArgCondition, ...]], list[str]] = {}
    for call, rules in by_call.items():
        cond = [r for r in rules if r.conditions]
        for r in rules:
            conds = r.conditions
            if not conds and cond:
                index = min(c.index for x in cond for c in x.conditions)
                conds = (ArgCondition(index, ArgOp.GE, 0),)
            groups.setdefault((r.action, conds), []).append(call)
    out = []
    for (action, conds), names in groups.items():
        entry: dict[str, object] = {"names": names, "action": _OCI_ACTION[action.kind]}
        if action.kind is ActionKind.ERRNO:
            entry["errnoRet"] = action.errno
        if conds:
            entry["args"] = [_arg(c) for c in conds]
        out.append(entry)
    doc["syscalls"] = out
    return json.dumps(doc, indent=2) + "\n"


def _arg(c: ArgCondition) -> dict[str, object]:
    if c.op is ArgOp.MASKED_EQ:
        return {"index": c.index, "value": c.mask, "valueTwo": c.value, "op": _OCI_OP[c.op]}
    return {"index": c.index, "value": c.value, "valueTwo": 0, "op": _OCI_OP[c.op]}


def to_toml(imported: Imported, source: str) -> str:
    """A warden profile file for an imported policy."""
    p = imported.policy
    lines = [f"# Imported from {source} by `warden profile import`.",
             "# Rules left out (capabilities warden never grants, other architectures):"]
    lines += [f"#   {n}" for n in imported.notes] or ["#   none"]
    lines += ["", f'description = "Imported from {os.path.basename(source)}"', "",
              "[seccomp]", f'default-action = "{format_action(p.default_action)}"', ""]
    plain = [r.syscall for r in p.rules if not r.conditions and r.action.kind is ActionKind.ALLOW]
    if plain:
        lines.append("allow = [")
        lines += [f'    "{n}",' for n in plain]
        lines += ["]", ""]
    for r in p.rules:
        if not r.conditions and r.action.kind is ActionKind.ALLOW:
            continue
        lines += ["[[seccomp.rules]]", f'syscall = "{r.syscall}"',
                  f'action = "{format_action(r.action)}"']
        if r.conditions:
            lines.append("args = [" + ", ".join(f'"{_cond_text(c)}"' for c in r.conditions) + "]")
        lines.append("")
    return "\n".join(lines)


def _cond_text(c: ArgCondition) -> str:
    if c.op is ArgOp.MASKED_EQ:
        return f"arg{c.index} & {c.mask:#x} == {c.value:#x}"
    return f"arg{c.index} {c.op.value} {c.value:#x}"
