"""SandboxExecutor: concurrent.futures semantics, validated results, hostile functions.

Every call runs in a real sandboxed worker (zygote or fork, python-worker
profile); the hostile ones really crash, hang, lie about their result or try
to escape, and each test proves the other futures still complete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

import warden
from tests.supervisor import executor_tasks as tasks
from tests.supervisor.util import CALC, PRELOAD, children, run, zombie_children
from tests.supervisor.workers import Calc, CalcImpl
from warden import (
    BadResult,
    DeadlineExceeded,
    RestartPolicy,
    SandboxExecutor,
    TaskError,
    WorkerDied,
    supervisor,
)
from warden.supervisor.events import BadMessageEvent, Event, Exited, Started
from warden.supervisor.sandbox import Outcome, PreflightError

TASKS = "tests.supervisor.executor_tasks"
# Hostile tests crash many workers on purpose: no crash-loop stop, short backoff.
TOLERANT = RestartPolicy("on-failure", backoff=0.01, max_backoff=0.05, crash_loop_limit=1000)


class Recorder:
    """The supervisor's events, collected from its loop thread."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, kind: type[Event], count: int = 1) -> list[Any]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.of(kind)) >= count, timeout=60)
            return self.of(kind)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@contextlib.contextmanager
def executor(**kwargs: Any) -> Iterator[tuple[SandboxExecutor, Recorder]]:
    kwargs.setdefault("preload", [TASKS])
    kwargs.setdefault("restart", TOLERANT)
    try:
        ex = SandboxExecutor(**kwargs)
    except PreflightError as e:  # this machine cannot make user namespaces
        pytest.skip(str(e))
    rec = Recorder()
    ex.supervisor.subscribe(rec)
    try:
        yield ex, rec
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    assert children() == set(), "a process outlived the executor's shutdown"
    assert zombie_children() == []


def wait_until(check: Any, what: str) -> None:
    event = threading.Event()
    for _ in range(6000):
        if check():
            return
        event.wait(0.01)
    raise AssertionError(f"never happened: {what}")


# ------------------------------------------------------------------ correctness

@pytest.mark.parametrize("start_method", ["zygote", "fork"])
def test_submit_map_as_completed_and_wait(start_method: str) -> None:
    with executor(max_workers=2, start_method=start_method) as (ex, _):
        assert ex.submit(tasks.total, [1, 2, 3]).result() == 6
        assert ex.submit(tasks.point, 3, y=4).result() == tasks.Point(3, 4)
        assert ex.submit(tasks.pair, "a", b="b").result() == ("a", "b")
        assert list(ex.map(tasks.square, range(20))) == [i * i for i in range(20)]
        assert list(ex.map(tasks.pair, "xy", "zw")) == [("x", "z"), ("y", "w")]
        futures = [ex.submit(tasks.identity, i) for i in range(10)]
        assert sorted(f.result() for f in cf.as_completed(futures)) == list(range(10))
        done, not_done = cf.wait(futures)
        assert len(done) == 10 and not not_done


def test_the_asyncio_face() -> None:
    with executor(max_workers=2) as (ex, _):
        async def main() -> list[int]:
            return await asyncio.gather(*(asyncio.wrap_future(ex.submit(tasks.square, i))
                                          for i in range(8)))
        assert asyncio.run(main()) == [i * i for i in range(8)]

        async def failing() -> None:
            await asyncio.wrap_future(ex.submit(tasks.raises, "from asyncio"))
        with pytest.raises(TaskError, match="from asyncio"):
            asyncio.run(failing())


def test_tasks_run_sandboxed() -> None:
    with executor(max_workers=1) as (ex, _):
        pid, _uid = ex.submit(tasks.whoami).result()
        assert pid == 1  # pid 1 of its own PID namespace
        (worker,) = ex.pool.workers.values()
        assert worker.profile == "python-worker" and worker.start_method == "zygote"
        assert worker.pid != 1  # the host sees another pid


# ------------------------------------------------------------------ refused at submit

def test_functions_that_cannot_be_sent_are_refused_at_submit() -> None:
    def nested(n: int) -> int:
        return n

    in_main = types.FunctionType(tasks.identity.__code__, {}, "identity")
    in_main.__module__ = "__main__"
    with executor(max_workers=1) as (ex, _):
        for fn in (lambda n: n, nested, in_main):
            with pytest.raises(TypeError, match=r"cannot be sent to a sandboxed worker: "
                               r"lambdas, closures, nested functions and functions of "
                               r"__main__ cannot be imported there; define it at module level"):
                ex.submit(fn, 1)
        with pytest.raises(TypeError, match="is not a plain Python function"):
            ex.submit(functools.partial(tasks.identity, 1))
        with pytest.raises(TypeError, match=r"test_supervisor_executor.test_result_decoding_kills_"
                           r"nothing_else: its module '[\w.]*test_supervisor_executor' is not "
                           r"loaded in the workers; name it in SandboxExecutor\(preload="):
            ex.submit(test_result_decoding_kills_nothing_else)
        assert ex.submit(tasks.identity, 5).result() == 5


@pytest.mark.parametrize(("fn", "why"), [
    (tasks.no_annotation, r"no_annotation has no return annotation; declare the result type"),
    (tasks.returns_any, r"returns_any: its return annotation Any lets any value through"),
    (tasks.returns_object, r"returns_object: its return annotation object: .*object.* is not "
     r"a type msgpack can check"),
    (tasks.returns_list, r"returns_list: its return annotation list lets any value through "
     r"\(Any, or an unparameterised container\)"),
    (tasks.returns_raw, r"returns_raw: its return annotation Raw lets undecoded bytes through"),
    (tasks.returns_loose, r"struct Loose must set forbid_unknown_fields=True"),
])
def test_results_without_a_checkable_type_are_refused_at_submit(fn: Any, why: str) -> None:
    with executor(max_workers=1) as (ex, _), pytest.raises(TypeError, match=why):
        ex.submit(fn, 1)


def test_unpicklable_arguments_are_refused_at_submit() -> None:
    with executor(max_workers=1) as (ex, _):
        with pytest.raises(TypeError, match=r"identity: its arguments cannot be pickled"):
            ex.submit(tasks.identity, threading.Lock())
        assert ex.submit(tasks.identity, 2).result() == 2


# ------------------------------------------------------------------ hostile functions

def test_hostile_functions_fail_only_their_own_futures() -> None:
    with executor(max_workers=2) as (ex, rec):
        good = [ex.submit(tasks.sleep_then, 20, i) for i in range(6)]
        lies = ex.submit(tasks.lies, 7)
        too_big = ex.submit(tasks.too_big, 1)
        raised = ex.submit(tasks.raises, "boom")
        long = ex.submit(tasks.raises_long)
        segv = ex.submit(tasks.segfault)
        exits = ex.submit(tasks.exits, 9)
        shadow = ex.submit(tasks.read_shadow)
        ptrace = ex.submit(tasks.ptrace_parent)
        more = [ex.submit(tasks.square, i) for i in range(6)]

        with pytest.raises(BadResult, match=r"in warden.ExecutorWorker.run: tests.supervisor."
                           r"executor_tasks.lies\(\) returned a value that is not int: "
                           r"Expected `int`, got `str`"):
            lies.result()
        with pytest.raises(BadResult, match=r"too_big\(\) returned a value that is not "
                           r"Annotated\[int, msgspec.Meta\(ge=0, le=1048576\)\]: Expected "
                           r"`int` <= 1048576"):
            too_big.result()
        with pytest.raises(TaskError, match=r"raises\(\) raised ValueError in its sandbox: "
                           r"boom$"):
            raised.result()
        with pytest.raises(TaskError) as e:
            long.result()
        assert e.value.type_name == "RuntimeError" and len(e.value.message) == 2000
        with pytest.raises(WorkerDied, match=r"ended during tests.supervisor.executor_tasks."
                           r"segfault\(\): killed by signal SIGSEGV"):
            segv.result()
        with pytest.raises(WorkerDied, match=r"exits\(\): exited with code 9"):
            exits.result()
        # python-worker answers path-based opens with EACCES (nothing is read) ...
        with pytest.raises(TaskError, match=r"raised PermissionError in its sandbox: "
                           r"\[Errno 13\] Permission denied: '/etc/shadow'"):
            shadow.result()
        # ... and kills a worker that calls ptrace.
        with pytest.raises(WorkerDied, match=r"ptrace_parent\(\): seccomp violation: ptrace\("):
            ptrace.result()

        assert [f.result() for f in good] == list(range(6))
        assert [f.result() for f in more] == [i * i for i in range(6)]
        assert ex.submit(tasks.total, [4, 5]).result() == 9

        bad = rec.wait_for(BadMessageEvent, 2)
        assert {e.method for e in bad} == {"run"}
        exited = rec.wait_for(Exited, 5)
        outcomes = [e.status.outcome for e in exited]
        assert outcomes.count(Outcome.BAD_MESSAGE) == 2
        assert Outcome.SIGNALED in outcomes and Outcome.EXITED in outcomes
        assert Outcome.SECCOMP_VIOLATION in outcomes
        (liar,) = [e.status for e in exited if "lies()" in (e.status.reason or "")]
        assert liar.outcome is Outcome.BAD_MESSAGE
        assert "Expected `int`, got `str`" in liar.reason


def test_result_decoding_kills_nothing_else() -> None:
    """A bad result kills its worker only: the other worker's call, running meanwhile, ends."""
    with executor(max_workers=2) as (ex, rec):
        slow = ex.submit(tasks.sleep_then, 300, 1)
        with pytest.raises(BadResult):
            ex.submit(tasks.lies, 1).result()
        assert slow.result() == 1
        assert len(rec.wait_for(Exited)) == 1


def test_a_hang_past_the_deadline_kills_its_worker_only() -> None:
    with executor(max_workers=2, call_timeout=3.0) as (ex, rec):
        hang = ex.submit(tasks.hangs)
        others = [ex.submit(tasks.square, i) for i in range(4)]
        with pytest.raises(DeadlineExceeded, match=r"hangs\(\): worker executor-\d+: run\(\) "
                           r"exceeded its 3s deadline; the worker was killed"):
            hang.result()
        assert [f.result() for f in others] == [0, 1, 4, 9]
        (ended,) = rec.wait_for(Exited)
        assert ended.status.outcome is Outcome.TIMEOUT
        assert ex.submit(tasks.square, 5).result() == 25  # on the replacement or the other


# ------------------------------------------------------------------ cancellation, shutdown

def test_cancellation_follows_concurrent_futures_rules() -> None:
    with executor(max_workers=1, call_timeout=3.0) as (ex, rec):
        busy = ex.submit(tasks.hangs)
        wait_until(busy.running, "the first call started")
        pending = [ex.submit(tasks.identity, i) for i in range(4)]
        assert not busy.cancel()  # running: cannot be cancelled
        assert pending[0].cancel() and pending[0].cancelled()
        # as_completed sees the cancellation at once, while the only worker is still busy
        assert next(cf.as_completed(pending)) is pending[0]
        assert busy.running()
        with pytest.raises(DeadlineExceeded):
            busy.result()
        assert [f.result() for f in pending[1:]] == [1, 2, 3]
        # the busy worker was killed, never handed the next call while busy
        (ended,) = rec.wait_for(Exited)
        assert ended.status.outcome is Outcome.TIMEOUT


def test_map_timeout_raises_from_the_iterator() -> None:
    with executor(max_workers=1) as (ex, _):
        results = ex.map(tasks.sleep_then, [2000, 2000], [1, 2], timeout=0.05)
        with pytest.raises(TimeoutError):
            list(results)
        assert ex.submit(tasks.identity, 3).result() == 3


def test_shutdown_cancels_pending_and_leaves_no_process() -> None:
    with executor(max_workers=1) as (ex, _):
        first = ex.submit(tasks.sleep_then, 1000, 1)  # still running when shutdown() comes
        wait_until(first.running, "the first call started")
        rest = [ex.submit(tasks.identity, i) for i in range(5)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert first.result() == 1
        assert all(f.cancelled() for f in rest)
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            ex.submit(tasks.identity, 1)
        assert children() == set() and zombie_children() == []


def test_shutdown_without_waiting_finishes_the_queue() -> None:
    with executor(max_workers=1) as (ex, _):
        futures = [ex.submit(tasks.sleep_then, 10, i) for i in range(4)]
        ex.shutdown(wait=False)
        assert [f.result() for f in futures] == [0, 1, 2, 3]
        ex.shutdown(wait=True)  # joins the background close
        assert children() == set() and zombie_children() == []


def test_context_manager_waits_for_the_calls() -> None:
    try:
        with SandboxExecutor(max_workers=2, preload=[TASKS]) as ex:
            futures = [ex.submit(tasks.sleep_then, 20, i) for i in range(4)]
    except PreflightError as e:
        pytest.skip(str(e))
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 2, 3]
    assert children() == set() and zombie_children() == []


# ------------------------------------------------------------------ pool behaviour used here

def test_max_tasks_per_worker_replaces_workers() -> None:
    with executor(max_workers=1, max_tasks_per_worker=2) as (ex, rec):
        served = [ex.submit(tasks.calls_here).result() for _ in range(5)]
        assert served == [1, 2, 1, 2, 1]
        retired = rec.wait_for(Exited, 2)
        assert [e.status.outcome for e in retired] == [Outcome.OK, Outcome.OK]
        assert len(rec.wait_for(Started, 2)) >= 2  # the replacements
        assert ex.pool.restarts == 0  # retirement is not counted as a restart


def test_bad_executor_options() -> None:
    with pytest.raises(ValueError, match=r"start_method='spawn'\): expected 'zygote' or "
                       r"'fork'"):
        SandboxExecutor(start_method="spawn")
    with pytest.raises(ValueError, match=r"preload=\['no.such.module'\]\): cannot import it"):
        SandboxExecutor(preload=["no.such.module"])
    with pytest.raises(ValueError, match=r"max_workers=0\): must be >= 1"):
        SandboxExecutor(max_workers=0)
    assert warden.SandboxExecutor is SandboxExecutor is supervisor.SandboxExecutor
    from warden.supervisor import executor
    assert executor.SandboxExecutor is SandboxExecutor


def test_a_cancelled_pool_call_keeps_its_worker_busy_until_it_answers() -> None:
    """The pool's rule (docs/supervisor.md): the worker is still working on the call,
    so it is not handed the next one before its reply; then it serves again."""
    async def main() -> None:
        async with supervisor.Supervisor(zygote_preload=PRELOAD) as sup:
            pool = await sup.pool(Calc, CALC, size=1, restart=TOLERANT,
                                  profile="python-worker")
            (w,) = pool.workers.values()
            call = asyncio.ensure_future(pool.call("sleep", 300))
            while not pool.status().get("busy", 0) and w._in_flight == 0:
                await asyncio.sleep(0)  # until the call has left for the worker
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            # Served by the same worker, once the abandoned call's reply came back.
            assert await pool.call("square", 6) == 36
            assert w.alive and w.status is None and list(pool.workers.values()) == [w]
    run(main())


def test_typed_pool_calls_take_the_declared_method() -> None:
    async def main() -> None:
        async with supervisor.Supervisor(zygote_preload=PRELOAD) as sup:
            pool = await sup.pool(Calc, CALC, size=1, profile="python-worker")
            assert await pool.call(Calc.square, 7) == 49
            assert await pool.call("square", 8) == 64
            with pytest.raises(TypeError, match=r"pool 'pool\d+': <function CalcImpl.square "
                               r".*> is not a method declared by Calc; pass Calc.<method> or "
                               r"the method's name"):
                await pool.call(CalcImpl.square, 7)  # type: ignore[arg-type]
            assert await pool.call(Calc.square, 9) == 81
    run(main())
