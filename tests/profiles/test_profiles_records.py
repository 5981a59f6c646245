"""The model's classes (and the sandbox's status records) are frozen dataclasses made on
first use (warden.profiles.records): each behaves exactly as `@dataclass(frozen=True)`
of the same body, whatever is asked of it first.

Each test runs in a fresh interpreter where nothing has been processed yet, asks
one thing first, and compares every behaviour with a twin class made by
dataclass() itself from the same body.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.interpreter import PYTHON, python_env

ROOT = __file__.rsplit("/tests/", 1)[0]

# What a user may ask of a class first; each must leave it a complete dataclass.
FIRST = {
    "instance": "C(*ARGS)",
    "fields": "dataclasses.fields(C)",
    "is_dataclass": "dataclasses.is_dataclass(C)",
    "match_args": "C.__match_args__",
    "signature": "inspect.signature(C)",
    "subclass": "dataclasses.make_dataclass('Sub', [('extra', int, dataclasses.field("
                "default=0))], bases=(C,), frozen=True)",
    "build": "records.build(C, dict(zip(records.field_names(C), ARGS_FULL)))",
    "pickle": "pickle.loads(pickle.dumps(records.build(C, dict(zip(records.field_names(C), "
              "ARGS_FULL)))))",
}

PROBE = """
import copy, dataclasses, inspect, pickle, sys, threading
from warden.profiles import model, records
from warden.supervisor.sandbox import status

MODULE, NAME, FIRST = sys.argv[1], sys.argv[2], sys.argv[3]
C = getattr({"model": model, "status": status}[MODULE], NAME)
# Action is made at import (model.ALLOW): every other class waits for its first use.
assert C in records._pending or NAME == "Action", "processed before anything asked"
samples = {"str": "s", "int": 3, "bool": True, "float": 1.5, "Action": model.ALLOW,
           "ActionKind": model.ActionKind.ERRNO, "ArgOp": model.ArgOp.EQ,
           "Outcome": status.Outcome.OK}
def sample(hint):
    for word, value in samples.items():
        if hint.startswith(word):
            return value
    return None if "None" in hint else ()
names = records.field_names(C)
hints = C.__dict__["__annotations__"]
ARGS_FULL = [sample(hints[n]) for n in names]
required = [n for n in names if n not in C.__dict__]
ARGS = ARGS_FULL[:len(required)]
first = eval(FIRST)                           # the first thing asked
# build() and unpickling make instances without needing the methods: still pending then.
assert (C in records._pending) is ("records.build" in FIRST and NAME != "Action")
if "records.build" in FIRST:
    assert first == C(*ARGS_FULL) and repr(first) == repr(C(*ARGS_FULL))

# The twin: dataclass() itself, on a copy of the class body.
body = {k: v for k, v in C.__dict__.items()
        if k not in ("__dict__", "__weakref__", "__dataclass_fields__", "__dataclass_params__",
                     "__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__",
                     "__match_args__")}
for f in dataclasses.fields(C):
    if f.default_factory is not dataclasses.MISSING:
        body[f.name] = dataclasses.field(default_factory=f.default_factory)
    elif f.default is not dataclasses.MISSING:
        body[f.name] = f.default
body["__module__"] = C.__module__
T = dataclasses.dataclass(frozen=True)(type(NAME, (), body))

a, t = C(*ARGS_FULL), T(*ARGS_FULL)
assert repr(a) == repr(t), (repr(a), repr(t))
assert str(inspect.signature(C)) == str(inspect.signature(T))
assert [(f.name, f.type, f.default, f.default_factory) for f in dataclasses.fields(C)] == \\
    [(f.name, f.type, f.default, f.default_factory) for f in dataclasses.fields(T)]
assert C.__match_args__ == T.__match_args__
assert a == C(*ARGS_FULL) and hash(a) == hash(C(*ARGS_FULL)) == hash(t)
assert a != t and (a == t) is False  # another class, as between two dataclasses
assert dataclasses.asdict(a) == dataclasses.asdict(t)
assert dataclasses.astuple(a) == dataclasses.astuple(t)
assert dataclasses.replace(a) == a and dataclasses.replace(a) is not a
assert copy.deepcopy(a) == a and pickle.loads(pickle.dumps(a)) == a
assert records.build(C, dict(zip(names, ARGS_FULL))) == a
for attr in (names[0], "not_a_field"):
    try:
        setattr(a, attr, 1)
    except dataclasses.FrozenInstanceError as e:
        assert str(e) == f"cannot assign to field {attr!r}", e
    else:
        raise AssertionError("assigned")
    try:
        delattr(a, attr)
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("deleted")
if required:
    try:
        C()
    except TypeError as e:
        try:
            T()
        except TypeError as f:
            assert str(e) == str(f), (e, f)
print("ok")
"""


def _classes() -> list[tuple[str, str]]:
    from warden.profiles import model, records
    from warden.supervisor.sandbox import status

    out = []
    for module_name, module in (("model", model), ("status", status)):
        for name, obj in vars(module).items():
            if isinstance(obj, type) and records.field_names(obj) is not None \
                    and obj.__module__ == module.__name__:
                out.append((module_name, name))
    return out


def test_the_lazy_classes_are_the_models_and_the_status_records() -> None:
    names = {n for _, n in _classes()}
    assert {"Profile", "SeccompPolicy", "SyscallRule", "Action", "Bind", "Limits",
            "Status", "Violation", "Complaint", "SetupFailure"} <= names


def _cases() -> list[tuple[str, str, str]]:
    """Each class with one first question, in turn: every question is asked first of
    some class (one fresh interpreter per class keeps this affordable)."""
    firsts = sorted(FIRST)
    classes = _classes()
    assert len(classes) >= len(firsts)
    return [(m, n, firsts[i % len(firsts)]) for i, (m, n) in enumerate(classes)]


@pytest.mark.parametrize(("module", "name", "first"), _cases())
def test_whatever_is_asked_first_it_is_the_dataclass(module: str, name: str, first: str) -> None:
    r = subprocess.run([PYTHON, "-c", PROBE, module, name, FIRST[first]], capture_output=True,
                       text=True, env=python_env(ROOT), timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


def test_threads_asking_at_once_all_get_the_dataclass() -> None:
    code = textwrap.dedent("""
        import threading
        from warden.profiles import model, records
        assert model.Limits in records._pending
        start, out = threading.Barrier(8), []
        def go():
            start.wait()
            out.append(repr(model.Limits(memory_bytes=1)))
        ts = [threading.Thread(target=go) for _ in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert out == [out[0]] * 8 and out[0].startswith("Limits(memory_bytes=1,"), out
        print("ok")
    """)
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                       env=python_env(ROOT), timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


def test_a_class_that_cannot_be_made_lazily_is_refused() -> None:
    from dataclasses import InitVar
    from typing import ClassVar

    from warden.profiles.records import LazyRecord, lazy_frozen

    with pytest.raises(TypeError, match="derives from LazyRecord"):
        @lazy_frozen
        class A:
            x: int

    with pytest.raises(TypeError, match="plain fields only"):
        @lazy_frozen
        class B(LazyRecord):
            x: ClassVar[int]

    with pytest.raises(TypeError, match="plain fields only"):
        @lazy_frozen
        class D(LazyRecord):
            x: InitVar[int]

    with pytest.raises(TypeError, match="__post_init__"):
        @lazy_frozen
        class E(LazyRecord):
            x: int

            def __post_init__(self) -> None:
                pass
