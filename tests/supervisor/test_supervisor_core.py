"""Supervisor basics in real sandboxes: each start method serves calls; every way a worker ends."""

from __future__ import annotations

import logging
import os

import pytest

from tests.supervisor.util import CALC, METHODS, PRELOAD, run
from tests.supervisor.workers import Calc, HostImpl
from warden import ipc
from warden.supervisor import Supervisor, WorkerHandle
from warden.supervisor.core import SpawnError
from warden.supervisor.events import BadMessageEvent, Exited, SeccompViolation, Started
from warden.supervisor.handle import WorkerDied
from warden.supervisor.sandbox import Outcome


def sup(method: str) -> Supervisor:
    return Supervisor(start_method=method, zygote_preload=PRELOAD)


@pytest.mark.parametrize("method", METHODS)
def test_spawn_call_terminate(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            seen: list[object] = []
            s.subscribe(seen.append)
            w = await s.spawn(Calc, CALC)
            assert w.start_method == method and w.profile == "strict"
            assert await w.remote.square(12) == 144
            assert w.status is None and w.alive
            st = await w.terminate()
            assert st.outcome is Outcome.OK, st
            assert [type(e) for e in seen] == [Started, Exited]
    run(main())


def test_handle_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="WorkerHandle has no public constructor; use "
                                        r"Supervisor.spawn\(\)"):
        WorkerHandle(object())


@pytest.mark.parametrize("method", METHODS)
def test_bad_message_kills_sender_only(method: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with sup(method) as s:
            q = s.event_queue()
            good = await s.spawn(Calc, CALC)
            bad = await s.spawn(Calc, CALC)
            with pytest.raises(WorkerDied, match=f"worker {bad.id} ended during act"):
                await bad.remote.act("bad_frame")
            st = await bad.wait()
            assert st.outcome is Outcome.BAD_MESSAGE
            assert "invalid envelope" in st.reason
            assert await good.remote.square(3) == 9
            evs = []
            while not q.empty():
                evs.append(q.get_nowait())
            bm = [e for e in evs if isinstance(e, BadMessageEvent)]
            assert len(bm) == 1 and bm[0].worker_id == bad.id and bm[0].reason
    with caplog.at_level(logging.WARNING, logger="warden.supervisor"):
        run(main())
    assert any("sent a bad message" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", METHODS)
def test_host_interface_trusted_context_and_permissions(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            host = HostImpl()
            w = await s.spawn(Calc, CALC, host=host, granted={"host.secret"})
            assert await w.remote.whoami() == f"{w.id} strict {w.pid}"
            ctx = host.contexts[0]
            assert ctx.peer_id == w.id and ctx.pid == w.pid
            assert ctx.extra["worker_id"] == w.id and ctx.extra["start_method"] == method
            assert await w.remote.act("secret") == len("s3cret")
            # Without the grant, the same call is a bad message: the worker dies.
            w2 = await s.spawn(Calc, CALC, host=HostImpl())
            with pytest.raises(WorkerDied):
                await w2.remote.act("secret")
            st = await w2.wait()
            assert st.outcome is Outcome.BAD_MESSAGE and "permission" in st.reason
    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_every_death_is_reported(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            w = await s.spawn(Calc, CALC)
            with pytest.raises(WorkerDied, match=r"exited with code 7"):
                await w.remote.act("exit", 7)
            assert (await w.wait()).returncode == 7
            w = await s.spawn(Calc, CALC)
            with pytest.raises(WorkerDied, match="SIGSEGV"):
                await w.remote.act("segv")
            w = await s.spawn(Calc, CALC)
            with pytest.raises(WorkerDied, match="seccomp"):
                await w.remote.act("open")  # strict: no open at all
            st = await w.wait()
            assert st.outcome is Outcome.SECCOMP_VIOLATION
            w = await s.spawn(Calc, CALC)
            w.kill()
            assert (await w.wait()).outcome is Outcome.KILLED
            with pytest.raises(WorkerDied, match="killed"):
                await w.remote.square(2)
    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_death_during_setup_is_a_spawn_error(method: str) -> None:
    async def main() -> None:
        async with sup(method) as s:
            with pytest.raises(SpawnError) as info:
                await s.spawn(Calc, "tests.supervisor.workers:BadOnStart")
            assert info.value.status is not None
            assert info.value.status.outcome is Outcome.SETUP_ERROR
            with pytest.raises(SpawnError) as info:
                await s.spawn(Calc, "tests.supervisor.workers:ExitOnStart")
            assert info.value.status is not None
            assert info.value.status.outcome in (Outcome.EXITED, Outcome.SETUP_ERROR)
            with pytest.raises(SpawnError):
                await s.spawn(Calc, "tests.supervisor.no_such_module:X")
            # and the supervisor carries on
            w = await s.spawn(Calc, CALC)
            assert await w.remote.square(5) == 25
    run(main())


def test_seccomp_event() -> None:
    async def main() -> None:
        async with sup("fork") as s:
            q = s.event_queue()
            w = await s.spawn(Calc, CALC)
            with pytest.raises(WorkerDied):
                await w.remote.act("open")
            await w.wait()
            kinds = []
            while not q.empty():
                kinds.append(type(q.get_nowait()))
            assert SeccompViolation in kinds
    run(main())


def test_remote_error_is_not_death() -> None:
    async def main() -> None:
        async with sup("fork") as s:
            w = await s.spawn(Calc, CALC)
            with pytest.raises(ValueError):
                await w.remote.square(-1)  # refused locally: out of the declared range
            assert await w.remote.square(4) == 16
            assert isinstance(w.channel, ipc.AsyncChannel)
    run(main())


def test_program_speaking_on_fd3() -> None:
    """Any program under the sandbox: here a tiny Python script serving Calc on fd 3."""
    from tests.supervisor.util import WORKTREE

    async def main() -> None:
        async with sup("spawn") as s:
            code = ("from warden import ipc; from tests.supervisor.workers import CalcImpl; "
                    "ipc.connect_from_env(serve=CalcImpl()).serve_forever()")
            import site
            import sys
            # The packages this interpreter imports from: its site directories, and any
            # on sys.path (the ordinary-uid run puts the venv's there through PYTHONPATH).
            found = [*site.getsitepackages(), *(p for p in sys.path if p.endswith("-packages"))]
            paths = [WORKTREE, *dict.fromkeys(p for p in found if os.path.isdir(p))]
            w = await s.spawn_program(
                ["/usr/bin/python3", "-c", code], interface=Calc, profile="default",
                ro_binds=paths, env=[f"PYTHONPATH={':'.join(paths)}"])
            assert w.start_method == "program"
            assert await w.remote.square(21) == 441
            with pytest.raises(WorkerDied):
                await w.remote.act("bad_frame")
            st = await w.wait()
            assert st.outcome is Outcome.BAD_MESSAGE
    run(main())


def test_sync_face() -> None:
    from warden.supervisor import SyncSupervisor

    with SyncSupervisor(start_method="zygote", zygote_preload=PRELOAD) as s:
        w = s.spawn(Calc, CALC)
        assert w.call("square", 12) == 144
        pool = s.pool(Calc, CALC, size=2)
        assert [pool.call("square", i) for i in range(4)] == [0, 1, 4, 9]
        with pytest.raises(WorkerDied):
            w.call("act", "bad_frame")
        assert w.wait().outcome is Outcome.BAD_MESSAGE


def test_program_seccomp_violation_names_the_call() -> None:
    """Programs get the sandbox's user-notify reporting: the event names the system call."""
    async def main() -> None:
        async with sup("spawn") as s:
            q = s.event_queue()
            w = await s.spawn_program(
                ["/usr/bin/python3", "-c",
                 "import ctypes, time; ctypes.CDLL(None).syscall(279, 0, 0); time.sleep(30)"],
                profile="default")
            st = await w.wait()
            assert st.outcome is Outcome.SECCOMP_VIOLATION
            assert st.violation is not None and st.violation.syscall == "move_pages"
            evs = []
            while not q.empty():
                evs.append(q.get_nowait())
            viol = [e for e in evs if isinstance(e, SeccompViolation)]
            assert len(viol) == 1 and viol[0].syscall == "move_pages"
    run(main())


@pytest.mark.parametrize("method", METHODS)
def test_python_worker_violation_names_the_call(method: str) -> None:
    """Every Python worker hands its filter's listener to the supervisor (a spawn-method
    worker's sandbox holds none, so its own filter can take it): a refused call blocks
    in the kernel, is recorded with its name and arguments, and the worker dies."""
    async def main() -> None:
        async with sup(method) as s:
            q = s.event_queue()
            w = await s.spawn(Calc, CALC)   # strict: no open at all
            with pytest.raises(WorkerDied, match=r"seccomp violation: openat\(AT_FDCWD, "):
                await w.remote.act("open")
            st = await w.wait()
            assert st.outcome is Outcome.SECCOMP_VIOLATION
            assert st.violation is not None and st.violation.syscall == "openat"
            assert st.violation.args[0] & 0xFFFFFFFF == 0xFFFFFF9C  # AT_FDCWD
            evs = []
            while not q.empty():
                evs.append(q.get_nowait())
            assert [e.syscall for e in evs if isinstance(e, SeccompViolation)] == ["openat"]
            other = await s.spawn(Calc, CALC)
            assert await other.remote.square(3) == 9
    run(main())
