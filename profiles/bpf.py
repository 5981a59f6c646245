"""An exact interpreter for classic-BPF seccomp filters.

It runs the compiled bytes the kernel would run, on a `struct seccomp_data`
built from (nr, arch, ip, args), so `warden profile explain` and the tests
judge the filter itself rather than the profile it came from (minijail's
bpf.py simulator plays the same part). Every instruction the kernel's seccomp
checker admits is implemented; anything else raises BpfError.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from warden.profiles.errors import ProfileError
from warden.profiles.model import Action, ActionKind

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF

SECCOMP_DATA_SIZE = 64
_U32 = 0xFFFFFFFF

# Instruction classes, sizes, modes, operations and sources (linux/bpf_common.h).
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD, BPF_XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0)
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
BPF_TAX, BPF_TXA = 0x00, 0x80
BPF_MEMWORDS = 16
BPF_MAXINSNS = 4096


class BpfError(ProfileError, ValueError):
    """The program is not one the kernel's seccomp checker would accept or finish.

    A ProfileError (the program is what the caller gave) and, as before, a ValueError.
    """


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int


def decode(bpf: bytes) -> list[Insn]:
    if len(bpf) % 8 or not bpf:
        raise BpfError(f"a filter is a non-empty multiple of 8 bytes, got {len(bpf)}")
    insns = [Insn(*f) for f in struct.iter_unpack("=HBBI", bpf)]
    if len(insns) > BPF_MAXINSNS:
        raise BpfError(f"{len(insns)} instructions exceed the kernel's limit of {BPF_MAXINSNS}")
    return insns


def instruction_count(bpf: bytes) -> int:
    return len(bpf) // 8


def seccomp_data(nr: int, args: Sequence[int] = (), *, arch: int = AUDIT_ARCH_X86_64,
                 ip: int = 0) -> bytes:
    """The 64-byte `struct seccomp_data` the kernel hands a filter."""
    if len(args) > 6:
        raise ValueError("a system call has at most 6 arguments")
    full = [a & 0xFFFFFFFFFFFFFFFF for a in args] + [0] * (6 - len(args))
    return struct.pack("=iIQ6Q", _s32(nr), arch & _U32, ip & 0xFFFFFFFFFFFFFFFF, *full)


def _s32(v: int) -> int:
    v &= _U32
    return v - (1 << 32) if v & 0x80000000 else v


def evaluate(bpf: bytes, nr: int, args: Sequence[int] = (), *, arch: int = AUDIT_ARCH_X86_64,
             ip: int = 0) -> int:
    """Run the filter on one call; returns the SECCOMP_RET_* value (action | data)."""
    return run(decode(bpf), seccomp_data(nr, args, arch=arch, ip=ip))


def run(insns: Sequence[Insn], data: bytes) -> int:
    a = x = 0
    mem = [0] * BPF_MEMWORDS
    pc = 0
    n = len(insns)
    while True:
        if pc >= n:
            raise BpfError(f"fell off the end of the program at instruction {pc}")
        ins = insns[pc]
        cls = ins.code & 0x07
        if cls == BPF_RET:
            src = ins.code & 0x18
            if src == BPF_K:
                return ins.k & _U32
            if src == BPF_A:
                return a
            raise BpfError(f"bad RET at {pc}")
        if cls in (BPF_LD, BPF_LDX):
            mode = ins.code & 0xE0
            size = ins.code & 0x18
            if mode == BPF_ABS and cls == BPF_LD:
                if size != BPF_W or ins.k % 4 or ins.k + 4 > len(data):
                    raise BpfError(f"seccomp only loads aligned 32-bit words of seccomp_data "
                                   f"(instruction {pc}: size {size:#x}, offset {ins.k})")
                val = struct.unpack_from("=I", data, ins.k)[0]
            elif mode == BPF_IMM:
                val = ins.k
            elif mode == BPF_MEM:
                if ins.k >= BPF_MEMWORDS:
                    raise BpfError(f"scratch slot {ins.k} out of range at {pc}")
                val = mem[ins.k]
            elif mode == BPF_LEN:
                val = len(data)
            else:
                raise BpfError(f"load mode {mode:#x} not allowed in seccomp at {pc}")
            if cls == BPF_LD:
                a = val & _U32
            else:
                x = val & _U32
        elif cls in (BPF_ST, BPF_STX):
            if ins.k >= BPF_MEMWORDS:
                raise BpfError(f"scratch slot {ins.k} out of range at {pc}")
            mem[ins.k] = a if cls == BPF_ST else x
        elif cls == BPF_ALU:
            a = _alu(ins, a, x, pc)
        elif cls == BPF_JMP:
            op = ins.code & 0xF0
            if op == BPF_JA:
                pc += 1 + ins.k
                continue
            operand = x if ins.code & BPF_X else ins.k
            if op == BPF_JEQ:
                taken = a == operand
            elif op == BPF_JGT:
                taken = a > operand
            elif op == BPF_JGE:
                taken = a >= operand
            elif op == BPF_JSET:
                taken = bool(a & operand)
            else:
                raise BpfError(f"bad jump {ins.code:#x} at {pc}")
            pc += 1 + (ins.jt if taken else ins.jf)
            continue
        else:  # BPF_MISC
            if ins.code & 0xF8 == BPF_TAX:
                x = a
            elif ins.code & 0xF8 == BPF_TXA:
                a = x
            else:
                raise BpfError(f"bad MISC {ins.code:#x} at {pc}")
        pc += 1


def _alu(ins: Insn, a: int, x: int, pc: int) -> int:
    op = ins.code & 0xF0
    if op == BPF_NEG:
        return -a & _U32
    b = x if ins.code & BPF_X else ins.k
    if op == BPF_ADD:
        return (a + b) & _U32
    if op == BPF_SUB:
        return (a - b) & _U32
    if op == BPF_MUL:
        return (a * b) & _U32
    if op == BPF_DIV:
        return a // b if b else 0  # the kernel ends the program with 0 on division by zero
    if op == BPF_MOD:
        return a % b if b else 0
    if op == BPF_OR:
        return a | b
    if op == BPF_AND:
        return a & b
    if op == BPF_XOR:
        return a ^ b
    if op == BPF_LSH:
        return (a << b) & _U32 if b < 32 else 0
    if op == BPF_RSH:
        return a >> b if b < 32 else 0
    raise BpfError(f"bad ALU op {ins.code:#x} at {pc}")


def action_of(ret: int) -> Action:
    """The model Action for a SECCOMP_RET_* value (unknown actions kill, as in the kernel)."""
    full = ret & SECCOMP_RET_ACTION_FULL
    if full == SECCOMP_RET_ALLOW:
        return Action(ActionKind.ALLOW)
    if full == SECCOMP_RET_ERRNO:
        return Action(ActionKind.ERRNO, ret & SECCOMP_RET_DATA)
    if full == SECCOMP_RET_KILL_THREAD:
        return Action(ActionKind.KILL_THREAD)
    if full == SECCOMP_RET_TRAP:
        return Action(ActionKind.TRAP)
    if full == SECCOMP_RET_LOG:
        return Action(ActionKind.LOG)
    if full == SECCOMP_RET_USER_NOTIF:
        return Action(ActionKind.NOTIFY)
    return Action(ActionKind.KILL_PROCESS)


def describe(ret: int) -> str:
    """A name for a SECCOMP_RET_* value: "allow", "errno EPERM", "kill-process", ..."""
    full = ret & SECCOMP_RET_ACTION_FULL
    data = ret & SECCOMP_RET_DATA
    if full == SECCOMP_RET_ERRNO:
        return f"errno {_errno.errorcode.get(data, str(data))}"
    if full == SECCOMP_RET_TRACE:
        return f"trace {data}"
    if full == SECCOMP_RET_TRAP and data:
        return f"trap {data}"
    return str(action_of(ret))


def disassemble(bpf: bytes) -> list[str]:
    """One line per instruction, for debugging and `profile compile --listing`."""
    out = []
    for i, ins in enumerate(decode(bpf)):
        cls = ins.code & 0x07
        if cls == BPF_RET:
            text = f"ret {describe(ins.k)}" if not ins.code & BPF_A else "ret A"
        elif cls == BPF_LD and ins.code & 0xE0 == BPF_ABS:
            text = f"ld [{ins.k}]"
        elif cls == BPF_JMP and ins.code & 0xF0 == BPF_JA:
            text = f"ja +{ins.k}"
        elif cls == BPF_JMP:
            name = {BPF_JEQ: "jeq", BPF_JGT: "jgt", BPF_JGE: "jge", BPF_JSET: "jset"}.get(
                ins.code & 0xF0, "j?")
            operand = "X" if ins.code & BPF_X else f"{ins.k:#x}"
            text = f"{name} {operand} +{ins.jt} +{ins.jf}"
        else:
            text = f"op {ins.code:#06x} jt={ins.jt} jf={ins.jf} k={ins.k:#x}"
        out.append(f"{i:4d}: {text}")
    return out
