"""The profile language: accepted forms, and rejected ones with their exact messages."""

from __future__ import annotations

import pickle

import pytest

from warden.profiles.errors import ProfileError
from warden.profiles.locator import Locator
from warden.profiles.model import Action, ActionKind, ArgCondition, ArgOp
from warden.profiles.parser import parse_action, parse_condition, parse_text


def error_of(text: str) -> str:
    with pytest.raises(ProfileError) as info:
        parse_text(text, "x.toml")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[seccomp]\nallow = ["read", "opne"]\n',
            'x.toml:2:19: error: unknown system call "opne" (did you mean "open"?)\n'
            '    allow = ["read", "opne"]\n'
            "                      ^",
        ),
        (
            '[seccomp]\nallow = ["@file-sytem"]\n',
            'x.toml:2:11: error: unknown group "@file-sytem" (did you mean "@file-system"?)\n'
            '    allow = ["@file-sytem"]\n'
            "              ^",
        ),
        (
            '[seccomp]\nalow = ["read"]\n',
            'x.toml:2:1: error: unknown key "alow" in [seccomp] (did you mean "allow"?) '
            "(expected one of default-action, bad-arch-action, allow, deny, deny-action, reset, "
            "rules)\n"
            '    alow = ["read"]\n'
            "    ^",
        ),
        (
            '[seccomp]\ndeny-action = "errno EPRM"\n',
            'x.toml:2:15: error: unknown errno "EPRM" (expected an errno name such as EPERM, '
            "EACCES or ENOSYS, or a number 0..4095)\n"
            '    deny-action = "errno EPRM"\n'
            "                  ^",
        ),
        (
            '[seccomp]\ndefault-action = "kill"\n',
            'x.toml:2:18: error: unknown action "kill" (expected "allow", "kill-process", '
            '"kill-thread", "errno NAME", "trap", "log" or "user-notify")\n'
            '    default-action = "kill"\n'
            "                     ^",
        ),
        (
            '[[seccomp.rules]]\nsyscall = "socket"\naction = "allow"\nargs = ["arg0 == AF_INTE"]\n',
            'x.toml:4:18: error: unknown constant "AF_INTE" (did you mean "AF_INET"?)\n'
            '    args = ["arg0 == AF_INTE"]\n'
            "                     ^",
        ),
        (
            '[[seccomp.rules]]\nsyscall = "socket"\naction = "allow"\nargs = ["arg7 == 1"]\n',
            "x.toml:4:10: error: argument index 7 out of range (a system call has arg0..arg5)\n"
            '    args = ["arg7 == 1"]\n'
            "             ^",
        ),
        (
            '[[seccomp.rules]]\nsyscall = "socket"\naction = "allow"\nargs = ["arg0 is 1"]\n',
            'x.toml:4:10: error: cannot read this condition (expected "argN OP VALUE" (OP one of '
            '== != < <= > >=), "argN & MASK == VALUE", or "argN has-any|has-all|has-none FLAGS")\n'
            '    args = ["arg0 is 1"]\n'
            "             ^",
        ),
        (
            '[[seccomp.rules]]\nsyscall = "socket"\naction = "allow"\n'
            'args = ["arg0 > 1", "arg0 < 5"]\n',
            "x.toml:4:21: error: arg0 is already tested in this rule; libseccomp allows one test "
            "per argument in a rule (write a second rule instead)\n"
            '    args = ["arg0 > 1", "arg0 < 5"]\n'
            "                        ^",
        ),
        (
            '[[seccomp.rules]]\nsyscall = "ioctl"\naction = "allow"\n'
            'args = ["arg1 & 0xff == 0x100"]\n',
            "x.toml:4:25: error: 0x100 has bits outside the mask 0xff: it can never match\n"
            '    args = ["arg1 & 0xff == 0x100"]\n'
            "                            ^",
        ),
        (
            '[[seccomp.rules]]\nsyscall = "ioctl"\naction = "allow"\nargs = ["arg1 & 0xff != 1"]\n',
            "x.toml:4:22: error: a masked argument can only be compared with ==\n"
            '    args = ["arg1 & 0xff != 1"]\n'
            "                         ^",
        ),
        (
            '[seccomp]\nallow = ["read"\n',
            'x.toml:2:16: error: invalid TOML: Unclosed array\n    allow = ["read"\n'
            "                   ^",
        ),
        (
            '[seccomp]\nbad-arch-action = "allow"\n',
            'x.toml:2:19: error: foreign architectures must be refused, not "allow" (expected '
            '"kill-process", "kill-thread", "errno NAME" or "trap")\n'
            '    bad-arch-action = "allow"\n'
            "                      ^",
        ),
        (
            '[filesystem]\nro = ["/usr", "lib"]\n',
            'x.toml:2:15: error: path "lib" must be absolute (expected a path starting with "/")\n'
            '    ro = ["/usr", "lib"]\n'
            "                  ^",
        ),
        (
            '[namespaces]\nnet = "no"\n',
            'x.toml:2:7: error: "namespaces.net" must be true or false (expected true or false, '
            "not a string)\n"
            '    net = "no"\n'
            "          ^",
        ),
        (
            '[seccomp]\nallow = ["read"]\n\n[[seccomp.rules]]\naction = "allow"\n',
            'x.toml:4:1: error: rule has no "syscall" (expected syscall = "NAME" or ["NAME", '
            '"@group"])\n'
            "    [[seccomp.rules]]\n"
            "    ^",
        ),
        (
            'extend = "default"\n',
            'x.toml:1:1: error: unknown key "extend" (did you mean "extends"?) (expected one of '
            "description, extends, include, seccomp, namespaces, filesystem, limits, environment, "
            "broker)\n"
            '    extend = "default"\n'
            "    ^",
        ),
        (
            '[limits]\nmemory = "lots"\n',
            'x.toml:2:10: error: "limits.memory" must be a size (expected a byte count or a '
            "string like \"64M\", not 'lots')\n"
            '    memory = "lots"\n'
            "             ^",
        ),
        (
            '[environment]\nset = { "BAD-NAME" = "x" }\n',
            'x.toml:2:9: error: "BAD-NAME" is not a variable name '
            "(expected letters, digits and _)\n"
            '    set = { "BAD-NAME" = "x" }\n'
            "            ^",
        ),
    ],
)
def test_rejected_with_exact_message(text: str, message: str) -> None:
    assert error_of(text) == message


def test_second_rules_entry_is_located() -> None:
    text = (
        "[[seccomp.rules]]\n"
        'syscall = "read"\n'
        'action = "allow"\n'
        "\n"
        "[[seccomp.rules]]\n"
        'syscall = "write"\n'
        'action = "errno NOPE"\n'
    )
    assert error_of(text).startswith('x.toml:7:10: error: unknown errno "NOPE"')


def test_error_attributes() -> None:
    with pytest.raises(ProfileError) as info:
        parse_text('[seccomp]\nallow = ["opne"]\n', "x.toml")
    e = info.value
    assert (e.file, e.line, e.column) == ("x.toml", 2, 11)
    assert e.source_line == 'allow = ["opne"]'
    assert e.message == 'unknown system call "opne" (did you mean "open"?)'
    assert e.include_chain == ()
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e)


def test_accepts_every_section() -> None:
    layer = parse_text(
        """
description = "all of it"
[seccomp]
default-action = "errno ENOSYS"
bad-arch-action = "kill-thread"
allow = ["@basic-io", "getpid"]
deny = ["ptrace"]
deny-action = "errno EACCES"
reset = ["socket"]
[[seccomp.rules]]
syscall = ["socket", "socketpair"]
action = "allow"
args = ["arg0 == AF_UNIX|0", "arg1 has-all SOCK_CLOEXEC"]
why = "local IPC only"
[namespaces]
net = false
[filesystem]
ro = ["/usr", { source = "/lib64", optional = true }]
rw = [{ source = "/srv", dest = "/data" }]
tmpfs = ["/run", { dest = "/cache", size = "16M" }]
tmp-size = 1048576
chdir = "/data"
[limits]
memory = "512M"
processes = 8
open-files = 64
cpu-time = 1.5
wall-time = 10
[environment]
keep = ["LANG"]
set = { MODE = "x" }
""",
        "x.toml",
    )
    assert layer.description == "all of it"
    assert layer.default_action == Action(ActionKind.ERRNO, 38)
    assert layer.bad_arch_action == Action(ActionKind.KILL_THREAD)
    assert layer.reset == ["socket"]
    ptrace = [e for e in layer.entries if e.syscall == "ptrace"]
    assert ptrace[0].action == Action(ActionKind.ERRNO, 13)
    sock = [e for e in layer.entries if e.syscall == "socketpair"]
    assert sock[0].conditions == (
        ArgCondition(0, ArgOp.EQ, 1),
        ArgCondition(1, ArgOp.MASKED_EQ, 0o2000000, 0o2000000),
    )
    assert sock[0].origin.line == 11
    assert layer.namespaces == {"net": False}
    assert [b.dest for b in layer.binds] == ["/usr", "/lib64", "/data"]
    assert layer.binds[1].optional and layer.binds[2].writable
    assert [(t.dest, t.size_bytes) for t in layer.tmpfs] == [
        ("/run", 64 << 20),
        ("/cache", 16 << 20),
    ]
    assert layer.limits == {"memory": 512 << 20, "processes": 8, "open-files": 64,
                            "cpu-time": 1.5, "wall-time": 10.0}
    assert layer.env_keep == ["LANG"] and layer.env_set == {"MODE": "x"}


def test_group_members_carry_the_group_in_their_origin() -> None:
    layer = parse_text('[seccomp]\nallow = ["@system-service"]\n', "x.toml")
    read = next(e for e in layer.entries if e.syscall == "read")
    assert read.origin.via == ("@system-service", "@basic-io")
    assert (read.origin.line, read.origin.column) == (2, 10)


def test_calls_of_other_architectures_are_accepted_and_skipped() -> None:
    layer = parse_text('[seccomp]\nallow = ["chown32", "read"]\n', "x.toml")
    assert [e.syscall for e in layer.entries] == ["read"]


@pytest.mark.parametrize(
    ("text", "conds"),
    [
        ("arg0 == 5", [ArgCondition(0, ArgOp.EQ, 5)]),
        ("arg1 != AF_INET", [ArgCondition(1, ArgOp.NE, 2)]),
        ("arg2<=0x10", [ArgCondition(2, ArgOp.LE, 16)]),
        ("arg3 > -1", [ArgCondition(3, ArgOp.GT, 0xFFFFFFFFFFFFFFFF)]),
        ("arg1 & U32_MAX == TIOCSTI", [ArgCondition(1, ArgOp.MASKED_EQ, 0x5412, 0xFFFFFFFF)]),
        ("arg0 has-none O_CREAT|O_TRUNC", [ArgCondition(0, ArgOp.MASKED_EQ, 0, 0o1100)]),
        (
            "arg0 has-any CLONE_NEWNS|CLONE_NEWUSER",
            [
                ArgCondition(0, ArgOp.MASKED_EQ, 0x20000, 0x20000),
                ArgCondition(0, ArgOp.MASKED_EQ, 0x10000000, 0x10000000),
            ],
        ),
    ],
)
def test_conditions(text: str, conds: list[ArgCondition]) -> None:
    assert parse_condition(text) == conds


def test_has_any_expands_to_one_rule_per_flag() -> None:
    layer = parse_text(
        '[[seccomp.rules]]\nsyscall = "clone"\naction = "errno EPERM"\n'
        'args = ["arg0 has-any CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWNET"]\n',
        "x.toml",
    )
    assert len(layer.entries) == 3


def test_actions() -> None:
    assert parse_action("errno 38") == Action(ActionKind.ERRNO, 38)
    assert parse_action("user-notify") == Action(ActionKind.NOTIFY)
    for bad in ("errno", "errno 5000", "kill", "allow now"):
        with pytest.raises(ValueError):
            parse_action(bad)


def test_locator_paths() -> None:
    text = """# a comment with [brackets] and = signs
title = "x"   # trailing
multi = '''
[not.a.table]
'''
[a.b]
"quoted key" = 1
list = [
  "one",  # [comment]
  { inner = "two", deep = [1, 2] },
  [3, "fo]ur"],
]
[[a.rules]]
k = 1
[[a.rules]]
k = 2
[a.rules.sub]
z = true
"""
    loc = Locator(text)
    assert loc.key(("title",)) == (2, 1)
    assert loc.key(("a", "b")) == (6, 1)
    assert loc.key(("a", "b", "quoted key")) == (7, 1)
    assert loc.value(("a", "b", "list", 0)) == (9, 3)
    assert loc.key(("a", "b", "list", 1, "deep")) == (10, 20)
    assert loc.value(("a", "b", "list", 1, "deep", 1)) == (10, 31)
    assert loc.value(("a", "b", "list", 2, 1)) == (11, 7)
    assert loc.key(("a", "rules", 1, "k")) == (16, 1)
    assert loc.key(("a", "rules", 1, "sub", "z")) == (18, 1)
    # an unknown path falls back to its nearest written ancestor
    assert loc.value(("a", "rules", 0, "missing")) == (13, 1)
