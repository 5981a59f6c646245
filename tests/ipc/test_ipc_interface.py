"""Interface declarations: mistakes are caught when the class is defined, with the
method named; method ids derive from names, not order."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.ipc.decl_cases import Good, Mutable, Node, Open
from tests.ipc.ifaces import Service, Staged
from warden import ipc
from warden.ipc.wire import method_id


def test_method_ids_are_sha256_of_qualified_names() -> None:
    expected = int.from_bytes(hashlib.sha256(b"test.Service.echo").digest()[:4], "big")
    assert Service.__ipc_methods__["echo"].id == expected == method_id("test.Service", "echo")


def test_method_ids_do_not_depend_on_declaration_order() -> None:
    class A(ipc.Interface, name="demo.Same"):
        @ipc.call()
        def one(self, ctx: ipc.Context) -> None: ...

        @ipc.call()
        def two(self, ctx: ipc.Context) -> None: ...

    class B(ipc.Interface, name="demo.Same"):
        @ipc.call()
        def two(self, ctx: ipc.Context) -> None: ...

        @ipc.call()
        def one(self, ctx: ipc.Context) -> None: ...

    assert A.__ipc_methods__["one"].id == B.__ipc_methods__["one"].id


def declare(body: dict[str, Any], **kw: Any) -> type[ipc.Interface]:
    return type("Decl", (ipc.Interface,), {"__module__": __name__, **body}, **kw)


def test_any_is_refused() -> None:
    def m(self: Any, ctx: ipc.Context, x: Any) -> None: ...

    with pytest.raises(ipc.InterfaceError, match=r"Decl.m\(x\): `Any`/`object` is not allowed"):
        declare({"m": ipc.call()(m)})


def test_struct_without_forbid_unknown_fields_is_refused() -> None:
    def m(self: Any, ctx: ipc.Context, x: Open) -> None: ...

    with pytest.raises(ipc.InterfaceError, match="struct Open must set forbid_unknown_fields"):
        declare({"m": ipc.call()(m)})


def test_nested_open_struct_is_refused() -> None:
    def m(self: Any, ctx: ipc.Context, x: Good) -> None: ...

    with pytest.raises(ipc.InterfaceError, match=r"Decl.m\(x\).inner: struct Open must set"):
        declare({"m": ipc.call()(m)})


def test_mutable_struct_is_refused() -> None:
    def m(self: Any, ctx: ipc.Context) -> Mutable:
        raise NotImplementedError

    with pytest.raises(ipc.InterfaceError, match=r"\(return\): struct Mutable must set frozen"):
        declare({"m": ipc.call()(m)})


def test_ctx_is_required() -> None:
    def m(self: Any, x: int) -> None: ...

    with pytest.raises(ipc.InterfaceError, match="first parameter after self must be `ctx"):
        declare({"m": ipc.call()(m)})


def test_one_way_message_cannot_return() -> None:
    def m(self: Any, ctx: ipc.Context) -> int:
        raise NotImplementedError

    with pytest.raises(ipc.InterfaceError, match="a one-way message must return None"):
        declare({"m": ipc.message()(m)})


def test_states_need_an_initial_state() -> None:
    def m(self: Any, ctx: ipc.Context) -> None: ...

    with pytest.raises(ipc.InterfaceError, match="need initial_state="):
        declare({"m": ipc.call(when="x")(m)})


def test_endpoint_must_name_its_interface() -> None:
    def m(self: Any, ctx: ipc.Context, e: ipc.Remote) -> None: ...  # type: ignore[type-arg]

    with pytest.raises(ipc.InterfaceError, match=r"must name its interface, e.g. Remote\[Foo\]"):
        declare({"m": ipc.call()(m)})


def test_unannotated_parameter_is_refused() -> None:
    def m(self, ctx, x):  # type: ignore[no-untyped-def]
        ...

    with pytest.raises(ipc.InterfaceError, match="parameter x has no type annotation"):
        declare({"m": ipc.call()(m)})


def test_empty_interface_is_refused() -> None:
    with pytest.raises(ipc.InterfaceError, match="needs at least one method"):
        declare({})


def test_implementation_cannot_add_methods() -> None:
    with pytest.raises(ipc.InterfaceError, match="implementations cannot declare new methods"):

        class Impl(Staged):
            @ipc.call()
            def extra(self, ctx: ipc.Context) -> None: ...


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match=r"Limits\.max_fds_held must be a positive int, got 0"):
        ipc.Limits(max_fds_held=0)
    with pytest.raises(ValueError, match="max_fds_per_frame must be at most 253"):
        ipc.Limits(max_fds_per_frame=300)


def test_recursive_struct_is_accepted_and_decoded() -> None:
    def m(self: Any, ctx: ipc.Context, tree: Node) -> int:
        raise NotImplementedError

    iface = declare({"m": ipc.call()(m)})
    spec = iface.__ipc_methods__["m"]
    import msgspec

    tree = Node("a", [Node("b"), Node("c", [Node("d")])])
    assert spec.params_decoder.decode(msgspec.msgpack.encode({"tree": tree})).tree == tree


def test_deeply_nested_payload_is_a_bad_message_not_a_crash() -> None:
    from warden.ipc.session import Session
    from warden.ipc.wire import method_id

    def m(self: Any, ctx: ipc.Context, tree: Node) -> int:
        raise NotImplementedError

    iface = declare({"m": ipc.call()(m)}, name="deep.Tree")
    server = Session(peer="p", serve=iface, remote=None, granted=frozenset(),
                     limits=ipc.DEFAULT_LIMITS)
    level = b"\x82\xa4name\xa1a\xa8children\x91"
    payload = b"\x81\xa4tree" + level * 5000 + b"\x81\xa4name\xa1a"
    import msgspec

    frame = msgspec.msgpack.encode((0, method_id("deep.Tree", "m"), 1, msgspec.Raw(payload)))
    with pytest.raises(ipc.BadMessage, match=r"nesting deeper than 64$"):
        server.decode(frame, [])
