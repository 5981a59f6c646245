"""Frozen dataclasses whose methods are made on first use.

`dataclasses.dataclass` compiles half a dozen methods per class with exec()
when the class is created (~0.7 ms each on the development VM), and `warden
run` imports some twenty such classes while most are never used there (a
violation record when nothing is violated, the profile's classes when the
profile comes decoded from the cache). `@lazy_frozen` makes a class that is
exactly `@dataclass(frozen=True)` the moment anything asks for what the
decorator would have made: creating an instance, repr, ==, hash, setting an
attribute, `dataclasses.fields()`, `replace()`, `asdict()`, `is_dataclass()`,
`__match_args__`. Until then those names resolve, through the class's base
`LazyRecord`, to a descriptor that runs `dataclass(frozen=True)` on the class
(once, under a lock) and answers with what it made; afterwards the class's
own attributes shadow the descriptors, so a processed class costs nothing
more than a dataclass.

`build(cls, values)` makes an instance from every field's value without
processing the class (a decoder's path: `warden.profiles.cache`).
"""

from __future__ import annotations

import _thread
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Mapping

T = TypeVar("T", bound=type)

_lock = _thread.RLock()
# Classes decorated and not yet processed -> their field names, in order.
_pending: dict[type, tuple[str, ...]] = {}
_fields: dict[type, tuple[str, ...]] = {}


def _process(owner: type) -> None:
    """Run dataclass(frozen=True) on every pending class in `owner`'s MRO, bases first."""
    with _lock:
        for c in reversed(owner.__mro__):
            if c in _pending:
                import dataclasses

                del _pending[c]
                dataclasses.dataclass(frozen=True)(c)


class _Made:
    """Stands for one name dataclass() sets on a class, until it has set it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        owner = type(obj) if owner is None else owner
        if owner is LazyRecord:
            raise AttributeError(self.name)
        _process(owner)
        for c in owner.__mro__:
            if c is LazyRecord:
                break
            if self.name in c.__dict__:
                value = c.__dict__[self.name]
                get = getattr(type(value), "__get__", None)
                return value if get is None else get(value, obj, owner)
        raise AttributeError(self.name)


class LazyRecord:
    """The base of every @lazy_frozen class (no state of its own)."""

    __slots__ = ()


for _name in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__",
              "__match_args__", "__dataclass_fields__", "__dataclass_params__"):
    setattr(LazyRecord, _name, _Made(_name))
del _name


def _lazy_frozen(cls: T) -> T:
    """@dataclass(frozen=True), made on first use. The class must derive from
    LazyRecord and declare plain fields only (no ClassVar, InitVar, KW_ONLY, no
    __post_init__), so its fields are its annotations."""
    if LazyRecord not in cls.__mro__:
        raise TypeError(f"{cls.__name__}: a @lazy_frozen class derives from LazyRecord")
    # As dataclass() reads them (inspect is not imported for this).
    annotations: Mapping[str, object] = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, hint in annotations.items():
        if any(word in str(hint) for word in ("ClassVar", "InitVar", "KW_ONLY")):
            raise TypeError(f"{cls.__name__}.{name}: plain fields only in a @lazy_frozen class")
    if "__post_init__" in dir(cls):
        raise TypeError(f"{cls.__name__}: no __post_init__ in a @lazy_frozen class")
    names = tuple(annotations)
    with _lock:
        _pending[cls] = names
        _fields[cls] = names
    return cls


def field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of a @lazy_frozen class, in order (None for any other class)."""
    return _fields.get(cls)


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of the @lazy_frozen `cls` with exactly these field values (all of
    them: ValueError otherwise), as its __init__ would make it, without processing
    the class. For a decoder that has every field (the class has no __post_init__)."""
    names = _fields[cls]
    if len(values) != len(names) or set(values) != set(names):
        raise ValueError(f"{cls.__name__}: fields {sorted(values)}, expected {list(names)}")
    obj: Any = object.__new__(cls)
    # What __init__'s object.__setattr__ calls leave (no field is a descriptor), in order.
    obj.__dict__.update([(name, values[name]) for name in names])
    return obj


if TYPE_CHECKING:
    from dataclasses import Field, field
    from typing import dataclass_transform

    @dataclass_transform(frozen_default=True, field_specifiers=(field, Field))
    def lazy_frozen(cls: T) -> T: ...
else:
    lazy_frozen = _lazy_frozen
