"""Declaring an interface: typed methods, permissions, protocol states, method ids.

An interface is a class that subclasses `Interface` directly; its methods, decorated with
`call` (expects a reply) or `message` (one-way), are the schema shared by both ends. Each
method's first parameter after ``self`` is the trusted `Context`; the others are typed with
msgspec-compatible types (frozen structs with ``forbid_unknown_fields=True``, Annotated
constraints, Literal, Enum...) or handle kinds. An implementation subclasses the interface
and overrides the methods; it adds no new ones.
"""

from __future__ import annotations

import enum
import inspect
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, get_args, get_origin

import msgspec
import msgspec.inspect as mi

from warden.ipc.errors import InterfaceError
from warden.ipc.handles import Handle, Receiver, Remote, _Endpoint
from warden.ipc.wire import MAX_NESTING, method_id

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__ipc_method_options__"


@dataclass(frozen=True, slots=True)
class _Options:
    oneway: bool
    permission: str | None
    when: frozenset[str] | None
    then: str | None


def _options(
    oneway: bool, permission: str | None, when: str | Iterable[str] | None, then: str | None
) -> Callable[[F], F]:
    states = frozenset([when] if isinstance(when, str) else when) if when is not None else None

    def mark(func: F) -> F:
        setattr(func, _ATTR, _Options(oneway, permission, states, then))
        return func

    return mark


def call(
    *, permission: str | None = None, when: str | Iterable[str] | None = None,
    then: str | None = None,
) -> Callable[[F], F]:
    """Declare a method that is answered with a reply (its return annotation is the reply type).

    permission: the name the peer must have been granted to call it (None: any peer).
    when: the protocol state(s) in which it is valid (None: any state).
    then: the state the receiver enters once the call is accepted.
    """
    return _options(False, permission, when, then)


def message(
    *, permission: str | None = None, when: str | Iterable[str] | None = None,
    then: str | None = None,
) -> Callable[[F], F]:
    """Declare a one-way message (no reply; must return None). Same options as `call`."""
    return _options(True, permission, when, then)


def handle_type(annotation: Any) -> tuple[type[Handle], type[Interface] | None] | None:
    """(handle class, bound interface) if `annotation` is a handle kind, else None."""
    origin = get_origin(annotation)
    if origin in (Remote, Receiver):
        (iface,) = get_args(annotation)
        if not (isinstance(iface, type) and issubclass(iface, Interface)):
            raise InterfaceError(f"{annotation} must name an Interface class")
        return origin, iface
    if isinstance(annotation, type) and issubclass(annotation, Handle):
        if annotation is Handle:
            # The base checks nothing: any fd at all (a FIFO, an epoll or a seccomp
            # listener fd) would reach the handler, the fd counterpart of `Any`.
            raise InterfaceError(
                "ipc.Handle accepts an fd of any kind; declare the kind it must be "
                "(ipc.ReadFile, ipc.Directory, ipc.Socket, ...)"
            )
        if issubclass(annotation, _Endpoint):
            raise InterfaceError(
                f"{annotation.__name__} must name its interface, e.g. {annotation.__name__}[Foo]"
            )
        return annotation, None
    return None


# Type nodes whose decoded value is a fresh, fully checked Python object (no nesting).
_SCALARS = (
    mi.IntType, mi.FloatType, mi.BoolType, mi.StrType, mi.BytesType, mi.ByteArrayType,
    mi.NoneType, mi.LiteralType, mi.EnumType, mi.DateTimeType, mi.DateType, mi.TimeType,
    mi.TimeDeltaType, mi.UUIDType, mi.DecimalType,
)
_ARRAYS = (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)
_ANY = (
    "`Any`/`object` is not allowed: it lets any data through (as does a bare list, dict, tuple "
    "or set, an unparameterised generic struct or a TypeVar); declare the precise type, "
    "e.g. list[int] or dict[str, int]"
)
# `$` outside a character class and not escaped: it also matches before a trailing newline.
_DOLLAR = re.compile(r"\\.|\[(?:\\.|[^\]\\])*\]|(\$)")
UNBOUNDED = -1  # the depth of a recursive type


def _refuse_pattern(pattern: str | None, where: str) -> None:
    if pattern is None:
        return
    if any(m.group(1) for m in _DOLLAR.finditer(pattern)):
        raise InterfaceError(
            f"{where}: pattern {pattern!r} uses `$`, which also matches before a trailing "
            f"newline; anchor it as \\A...\\Z (msgspec searches the pattern anywhere in the "
            f"string)"
        )


def _check_type(
    t: mi.Type, where: str, path: tuple[type, ...] = (), seen: dict[type, int] | None = None
) -> int:
    """Refuse types that would let unchecked or aliased data through; return the nesting depth.

    An allow-list: every node is a scalar msgspec checks and copies, a container of checked
    items, a union of those, or a frozen closed struct. Anything else (Any, object, Raw,
    memoryview, Ext, custom classes, dataclasses...) is refused. The depth counts nested
    MessagePack arrays/maps (UNBOUNDED for a recursive struct). `seen` memoises each
    struct's depth, so a struct used many times over is checked once.
    """
    seen = {} if seen is None else seen
    if isinstance(t, _SCALARS):
        _refuse_pattern(getattr(t, "pattern", None), where)
        if isinstance(t, mi.EnumType):
            _refuse_open_flag(t.cls, where)
        return 0
    if isinstance(t, mi.Metadata):  # Annotated with schema-only metadata (title=, extra=...)
        return _check_type(t.type, where, path, seen)
    if isinstance(t, mi.StructType):
        cls = get_origin(t.cls) or t.cls  # Box[int] is configured (and named) as Box
        if not t.forbid_unknown_fields:
            raise InterfaceError(
                f"{where}: struct {cls.__name__} must set forbid_unknown_fields=True"
            )
        if not cls.__struct_config__.frozen:
            raise InterfaceError(f"{where}: struct {cls.__name__} must set frozen=True")
        if t.cls in path:  # a recursive struct: its depth has no bound
            return UNBOUNDED
        if t.cls not in seen:
            sub = (*path, t.cls)
            seen[t.cls] = _nest(
                [_check_type(f.type, f"{where}.{f.name}", sub, seen) for f in t.fields]
            )
        return seen[t.cls]
    if isinstance(t, _ARRAYS):
        if isinstance(t, (mi.SetType, mi.FrozenSetType)):
            _refuse_steerable_hash(t.item_type, f"{where}: a set of", "list")
        return _nest([_check_type(t.item_type, where, path, seen)])
    if isinstance(t, mi.TupleType):
        return _nest([_check_type(sub, where, path, seen) for sub in t.item_types])
    if isinstance(t, (mi.DictType, mi.FrozenDictType)):
        key, value = t.key_type, t.value_type
        _refuse_steerable_hash(key, f"{where}: a dict keyed by", "list of pairs")
        return _nest([_check_type(key, where, path, seen), _check_type(value, where, path, seen)])
    if isinstance(t, mi.UnionType):
        depths = [_check_type(sub, where, path, seen) for sub in t.types]
        return UNBOUNDED if UNBOUNDED in depths else max(depths)
    if isinstance(t, mi.AnyType) or (isinstance(t, mi.CustomType) and t.cls is object):
        raise InterfaceError(f"{where}: {_ANY}")
    if isinstance(t, mi.RawType):
        raise InterfaceError(
            f"{where}: `msgspec.Raw` is not allowed: it passes undecoded data that aliases the "
            f"receive buffer; declare the type to decode into (bytes for opaque data)"
        )
    if isinstance(t, mi.MemoryViewType):
        raise InterfaceError(
            f"{where}: `memoryview` is not allowed: it would alias the receive buffer, which the "
            f"next frame overwrites; declare bytes (decoded as an owned copy)"
        )
    if isinstance(t, mi.ExtType):
        raise InterfaceError(
            f"{where}: `msgspec.msgpack.Ext` is not allowed: its type code is not checked; "
            f"declare bytes with a max_length"
        )
    if isinstance(t, (mi.TypedDictType, mi.DataclassType, mi.NamedTupleType)):
        raise InterfaceError(
            f"{where}: use a frozen msgspec Struct with forbid_unknown_fields=True instead of "
            f"{type(t).__name__}"
        )
    name = getattr(getattr(t, "cls", None), "__name__", type(t).__name__)
    raise InterfaceError(
        f"{where}: {name} is not a type the decoder checks; use a frozen msgspec Struct with "
        f"forbid_unknown_fields=True"
    )


def _refuse_open_flag(cls: type, where: str) -> None:
    """A Flag enum decodes any int unless its boundary is STRICT.

    msgspec builds a flag as ``cls(value)``; IntFlag's default boundary (KEEP) turns an
    undefined bit such as 1024 into a member-less flag instead of an error, so the declared
    members would not bound what reaches the handler.
    """
    if issubclass(cls, enum.Flag) and getattr(cls, "_boundary_", None) is not enum.STRICT:
        raise InterfaceError(
            f"{where}: flag enum {cls.__name__} accepts undefined bits (boundary "
            f"{getattr(cls, '_boundary_', None)}); declare it with boundary=enum.STRICT"
        )


# Leaves whose hash is a deterministic function of the value over a domain too large to
# enumerate. One such value alone collides with few others (an int with the ~12 others of
# its class modulo 2**61-1); two or more in one key (a tuple, a frozen struct, a frozenset)
# are mixed by an unkeyed, invertible function, so a peer can solve for as many keys with
# one hash as a frame holds.
_NUMERIC = (mi.IntType, mi.FloatType, mi.TimeDeltaType)
# Steerable even alone: a 128-bit int (UUID) or an arbitrary-precision number (Decimal)
# reduced modulo 2**61-1 has as many colliding values as the peer wants.
_STEERABLE = (mi.UUIDType, mi.DecimalType)
_MANY = 2  # a variadic container counts as two leaves of its item type


def _numeric_leaves(t: mi.Type, inside: tuple[type, ...] = ()) -> int:
    """How many deterministically hashed leaves a key of type `t` can hold (capped)."""
    if isinstance(t, mi.Metadata):
        return _numeric_leaves(t.type, inside)
    if isinstance(t, _STEERABLE):
        return _MANY
    if isinstance(t, _NUMERIC):
        return 1
    if isinstance(t, mi.UnionType):
        return max((_numeric_leaves(sub, inside) for sub in t.types), default=0)
    if isinstance(t, mi.TupleType):
        return min(_MANY, sum(_numeric_leaves(sub, inside) for sub in t.item_types))
    if isinstance(t, (mi.VarTupleType, mi.FrozenSetType)):
        return _MANY if _numeric_leaves(t.item_type, inside) else 0
    if isinstance(t, mi.StructType):
        if t.cls in inside:  # a recursive struct: counted at its first level
            return 0
        sub = (*inside, t.cls)
        return min(_MANY, sum(_numeric_leaves(f.type, sub) for f in t.fields))
    return 0  # str, bytes, datetime/date/time (randomised hashes), bool, None, Literal, Enum


def _refuse_steerable_hash(key: mi.Type, what: str, instead: str) -> None:
    """Refuse hashed containers whose keys a peer can make collide in one bucket.

    Building a set or dict of n values that share one hash costs n*n/2 comparisons: about
    3000 UUIDs fit in a 128 KiB frame and take seconds to decode, during which the event loop
    (every other channel) is stalled. str, bytes and datetime hashes are keyed per process
    (PYTHONHASHSEED), so a peer cannot aim them.
    """
    if _numeric_leaves(key) >= _MANY:
        raise InterfaceError(
            f"{what} {_type_name(key)} is refused: a peer can choose many values with one "
            f"hash and make decoding it quadratic, stalling the loop; declare a {instead} "
            f"(or key by str)"
        )


_KEY_NAMES = {mi.TupleType: "tuple", mi.VarTupleType: "tuple", mi.FrozenSetType: "frozenset",
              mi.UUIDType: "UUID", mi.DecimalType: "Decimal"}


def _type_name(t: mi.Type) -> str:
    if isinstance(t, mi.Metadata):
        return _type_name(t.type)
    if type(t) in _KEY_NAMES:
        return _KEY_NAMES[type(t)]
    return getattr(getattr(t, "cls", None), "__name__", type(t).__name__)


def _nest(depths: list[int]) -> int:
    """The depth of a container holding values of `depths`."""
    if UNBOUNDED in depths:
        return UNBOUNDED
    return 1 + max(depths, default=0)


def _check_depth(depth: int, where: str) -> None:
    if depth > MAX_NESTING:
        raise InterfaceError(
            f"{where}: nests {depth} levels of arrays/maps; a payload may nest at most "
            f"{MAX_NESTING} (flatten the type, or pass the data as a SealedMemory)"
        )


@dataclass(frozen=True, slots=True)
class HandleParam:
    name: str
    cls: type[Handle]
    interface: type[Interface] | None


@dataclass(frozen=True, eq=False, slots=True)
class MethodSpec:
    """Everything the wire layer needs about one method, built once at declaration."""

    interface: str
    name: str
    id: int
    oneway: bool
    permission: str | None
    when: frozenset[str] | None
    then: str | None
    params: type[msgspec.Struct]  # the value (non-handle) parameters, in order
    params_decoder: msgspec.msgpack.Decoder[Any]
    handles: tuple[HandleParam, ...]  # handle parameters, in order (= fd order)
    # per parameter in signature order: (is_handle, index into values or handles)
    plan: tuple[tuple[bool, int], ...]
    signature: inspect.Signature
    result: Any
    result_decoder: msgspec.msgpack.Decoder[Any]
    result_handle: HandleParam | None
    # a recursive type: the decoded value is measured against MAX_NESTING
    params_unbounded: bool
    result_unbounded: bool
    full_params: bool  # handles or unbounded depth: decoded off the fast path
    plain_result: bool  # no handle, bounded depth: the reply's fast path
    guarded: bool  # needs a permission or a protocol state: checked off the fast path

    @property
    def qualname(self) -> str:
        return f"{self.interface}.{self.name}"


def _build_spec(iface_name: str, func: Callable[..., Any], opts: _Options) -> MethodSpec:
    where = f"{iface_name}.{func.__name__}"
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as e:
        raise InterfaceError(f"{where}: cannot resolve annotations: {e}") from e
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    if len(params) < 2 or params[1].name != "ctx":
        raise InterfaceError(f"{where}: first parameter after self must be `ctx: ipc.Context`")
    values: list[tuple[Any, ...]] = []
    handles: list[HandleParam] = []
    plan: list[tuple[bool, int]] = []
    depths: list[int] = []
    for p in params[2:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise InterfaceError(f"{where}: parameter {p.name} must be a plain named parameter")
        if p.name not in hints:
            raise InterfaceError(f"{where}: parameter {p.name} has no type annotation")
        ann = hints[p.name]
        h = handle_type(ann)
        if h is not None:
            if p.default is not p.empty:
                raise InterfaceError(f"{where}: handle parameter {p.name} cannot have a default")
            plan.append((True, len(handles)))
            handles.append(HandleParam(p.name, h[0], h[1]))
            continue
        try:
            depths.append(_check_type(mi.type_info(ann), f"{where}({p.name})"))
        except InterfaceError:
            raise
        except Exception as e:
            raise InterfaceError(
                f"{where}: parameter {p.name}: unsupported type {ann!r}: {e}"
            ) from e
        plan.append((False, len(values)))
        values.append((p.name, ann) if p.default is p.empty else (p.name, ann, p.default))
    params_depth = _nest(depths)  # the payload is a map of the parameters
    _check_depth(params_depth, f"{where}(parameters)")
    try:
        params_struct = msgspec.defstruct(
            f"{iface_name}.{func.__name__}.params",
            values,
            frozen=True,
            forbid_unknown_fields=True,
            module=func.__module__,
        )
        params_decoder = msgspec.msgpack.Decoder(params_struct)
    except Exception as e:
        raise InterfaceError(f"{where}: cannot build parameter struct: {e}") from e
    result = hints.get("return", type(None))
    if result is None:
        result = type(None)
    if opts.oneway and result is not type(None):
        raise InterfaceError(f"{where}: a one-way message must return None")
    result_handle = None
    result_depth = 0
    h = handle_type(result)
    if h is not None:
        result_handle = HandleParam("return", h[0], h[1])
        result_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(type(None))
    else:
        try:
            result_depth = _check_type(mi.type_info(result), f"{where}(return)")
            result_decoder = msgspec.msgpack.Decoder(result)
        except InterfaceError:
            raise
        except Exception as e:
            raise InterfaceError(f"{where}: unsupported return type {result!r}: {e}") from e
        _check_depth(result_depth, f"{where}(return)")
    return MethodSpec(
        interface=iface_name,
        name=func.__name__,
        id=method_id(iface_name, func.__name__),
        oneway=opts.oneway,
        permission=opts.permission,
        when=opts.when,
        then=opts.then,
        params=params_struct,
        params_decoder=params_decoder,
        handles=tuple(handles),
        plan=tuple(plan),
        signature=sig.replace(parameters=params[2:]),
        result=result,
        result_decoder=result_decoder,
        result_handle=result_handle,
        params_unbounded=params_depth == UNBOUNDED,
        result_unbounded=result_depth == UNBOUNDED,
        full_params=bool(handles) or params_depth == UNBOUNDED,
        plain_result=result_handle is None and result_depth != UNBOUNDED,
        guarded=opts.permission is not None or opts.when is not None,
    )


class Interface:
    """Base class of interface declarations. Subclass directly to declare one:

        class Files(ipc.Interface, name="demo.Files", initial_state="new"):
            @ipc.call(permission="files.read")
            def read(self, ctx: ipc.Context, path: Path) -> bytes: ...

    `name` is the wire name (method ids derive from it); default: the class name.
    `initial_state` turns on protocol states; methods then say `when`/`then`.
    """

    __ipc_name__: ClassVar[str]
    __ipc_methods__: ClassVar[dict[str, MethodSpec]]
    __ipc_by_id__: ClassVar[dict[int, MethodSpec]]
    __ipc_initial_state__: ClassVar[str | None]
    __ipc_interface__: ClassVar[type[Interface]]

    def __init_subclass__(
        cls, *, name: str | None = None, initial_state: str | None = None, **kw: Any
    ) -> None:
        super().__init_subclass__(**kw)
        if Interface not in cls.__bases__:
            # An implementation: it must not add methods or rename the interface.
            if name is not None or initial_state is not None:
                raise InterfaceError(f"{cls.__name__}: only the declaration may set name/state")
            for attr, value in vars(cls).items():
                if hasattr(value, _ATTR) and attr not in cls.__ipc_methods__:
                    raise InterfaceError(
                        f"{cls.__name__}.{attr}: implementations cannot declare new methods"
                    )
            return
        cls.__ipc_name__ = name or cls.__name__
        cls.__ipc_initial_state__ = initial_state
        cls.__ipc_interface__ = cls
        methods: dict[str, MethodSpec] = {}
        by_id: dict[int, MethodSpec] = {}
        for attr, value in vars(cls).items():
            opts = getattr(value, _ATTR, None)
            if not isinstance(opts, _Options):
                continue
            if (opts.when or opts.then) and initial_state is None:
                raise InterfaceError(
                    f"{cls.__name__}.{attr}: `when`/`then` need initial_state= on the interface"
                )
            spec = _build_spec(cls.__ipc_name__, value, opts)
            if spec.id in by_id:
                raise InterfaceError(
                    f"{cls.__name__}: method ids of {attr} and {by_id[spec.id].name} collide"
                )
            methods[attr] = spec
            by_id[spec.id] = spec
        if not methods:
            raise InterfaceError(f"{cls.__name__}: an interface needs at least one method")
        cls.__ipc_methods__ = methods
        cls.__ipc_by_id__ = by_id


def interface_of(obj: Interface | type[Interface]) -> type[Interface]:
    """The declaring interface class of an implementation (instance or class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    if not issubclass(cls, Interface) or cls is Interface:
        raise TypeError(f"{cls.__name__} is not an ipc.Interface")
    return cls.__ipc_interface__
