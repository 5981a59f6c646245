"""SandboxExecutor: a concurrent.futures.Executor whose calls run in sandboxed workers.

    with SandboxExecutor(max_workers=4, preload=["myapp.tasks"]) as ex:
        fut = ex.submit(myapp.tasks.parse, data)     # def parse(data: bytes) -> Parsed
        print(fut.result())

The parent is trusted, the worker is not, so the two directions differ:

- parent -> worker: (function, args, kwargs) pickled; the function by
  reference (module and qualified name), so it must be defined at module
  level in a module the workers loaded before they locked down (`preload`:
  under python-worker a worker cannot open files, so it cannot import later);
- worker -> parent: never unpickled. The function's return annotation is the
  result type; the worker encodes the value with msgpack and the parent
  decodes it with a strict msgspec Decoder of that type, as ipc decodes any
  message. A value that does not match fails that future with BadResult, and
  its worker is killed as for a bad message. An exception in the function
  comes back as its type's name and message (TaskError), never as an object.

Each call runs on one worker of a supervisor Pool (restarts, a deadline per
call, max calls per worker), driven on the Supervisor's own loop in a
background thread (warden.supervisor.sync). See docs/executor.md.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import pickle
import sys
import threading
import types
import typing
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import msgspec
import msgspec.inspect as mi

from warden import ipc
from warden.errors import ChildFailed
from warden.ipc.interface import _check_type
from warden.supervisor.errors import (
    DeadlineExceeded,
    InvalidArgument,
    InvalidCall,
    NotRunning,
    SupervisorError,
)

if TYPE_CHECKING:
    import asyncio

    from warden.profiles.model import Profile
    from warden.supervisor.core import Supervisor
    from warden.supervisor.pool import Pool, RestartPolicy
    from warden.supervisor.sync import SyncSupervisor

TARGET = "warden.supervisor.executor:ExecutorWorkerImpl"
P = ParamSpec("P")
R = TypeVar("R")
MAX_TEXT = 2000  # characters of a remote exception's message that come back

TypeName = Annotated[str, msgspec.Meta(max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


# ------------------------------------------------------------------ the worker's interface

class Returned(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="returned"):
    """The function returned: its value, msgpack-encoded (decoded by the parent against the
    function's return annotation)."""

    value: bytes


class Raised(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="raised"):
    """The function (or loading it) raised: the exception's type name and message only."""

    type_name: TypeName
    message: Text


class ExecutorWorker(ipc.Interface, name="warden.ExecutorWorker"):
    @ipc.call()
    def run(self, ctx: ipc.Context, task: bytes) -> Returned | Raised:
        """Unpickle (fn, args, kwargs) from the trusted parent, call it, encode the result."""
        raise NotImplementedError


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


class ExecutorWorkerImpl(ExecutorWorker):
    """Runs in the sandbox, under the executor's profile."""

    def run(self, ctx: ipc.Context, task: bytes) -> Returned | Raised:
        try:
            fn, args, kwargs = pickle.loads(task)  # from the parent, which we trust
            return Returned(msgspec.msgpack.encode(fn(*args, **kwargs)))
        except Exception as e:
            kind = type(e)
            name = kind.__qualname__ if kind.__module__ == "builtins" else \
                f"{kind.__module__}.{kind.__qualname__}"
            return Raised(_bounded(name), _bounded(str(e)))


# ------------------------------------------------------------------ errors

class TaskError(ipc.RemoteError, SupervisorError):
    """The submitted function raised in its worker; carries the exception's type name and
    message as text (the exception object itself never leaves the sandbox)."""

    def __init__(self, function: str, type_name: str, message: str) -> None:
        super().__init__(f"{function}() raised {type_name} in its sandbox: {message}")
        self.function = function
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type[TaskError], tuple[str, str, str]]:
        return (type(self), (self.function, self.type_name, self.message))


class BadResult(ipc.BadMessage, SupervisorError, ChildFailed):
    """The worker sent a result that does not match the function's return annotation;
    the worker was killed (outcome bad_message)."""

    def __init__(self, worker_id: str, function: str, expected: str, reason: str) -> None:
        super().__init__(worker_id, f"{function}() returned a value that is not {expected}: "
                         f"{reason}", interface=ExecutorWorker.__ipc_name__, method="run")
        self.function = function
        self.expected = expected
        self._why = reason

    def __reduce__(self) -> tuple[type[BadResult], tuple[str, str, str, str]]:
        return (type(self), (self.peer, self.function, self.expected, self._why))


# ------------------------------------------------------------------ checks at submit

def _reference(fn: Callable[..., Any]) -> str:
    """'module.qualname' of a function the worker can find by that name, or TypeError."""
    if not isinstance(fn, types.FunctionType):
        raise InvalidCall(f"{fn!r} is not a plain Python function; submit a function defined "
                        "at module level")
    module, qualname = fn.__module__, fn.__qualname__
    name = f"{module}.{qualname}"
    if "<" in qualname or module == "__main__":
        raise InvalidCall(f"{name} cannot be sent to a sandboxed worker: lambdas, closures, "
                        "nested functions and functions of __main__ cannot be imported there; "
                        "define it at module level in an importable module")
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if obj is not fn:
        raise InvalidCall(f"{name} is not reachable by that name in its module; define it at "
                        "module level")
    return name


def _refuse_open_types(t: mi.Type, where: str, seen: set[type]) -> None:
    """Refuse what lets arbitrary data through: Any, object, Raw, custom classes."""
    if isinstance(t, mi.AnyType):
        raise InvalidCall(f"{where} lets any value through (Any, or an unparameterised "
                        "container)")
    if isinstance(t, mi.RawType):
        raise InvalidCall(f"{where} lets undecoded bytes through (msgspec.Raw)")
    if isinstance(t, (mi.CustomType, mi.ExtType)):
        raise InvalidCall(f"{where}: {getattr(t, 'cls', t)!r} is not a type msgpack can check")
    if isinstance(t, mi.StructType):
        if t.cls in seen:
            return
        seen.add(t.cls)
        for f in t.fields:
            _refuse_open_types(f.type, where, seen)
        return
    for attr in ("item_type", "key_type", "value_type"):
        sub = getattr(t, attr, None)
        if sub is not None:
            _refuse_open_types(sub, where, seen)
    for attr in ("item_types", "types"):
        for sub in getattr(t, attr, ()) or ():
            _refuse_open_types(sub, where, seen)


def result_decoder(fn: Callable[..., Any], name: str) -> tuple[str, msgspec.msgpack.Decoder[Any]]:
    """The declared result type's name and its strict decoder, or TypeError saying why not."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:
        raise InvalidCall(f"{name}: cannot resolve its annotations: {e}") from None
    if "return" not in hints:
        raise InvalidCall(f"{name} has no return annotation; declare the result type (e.g. "
                        "`-> int` or a frozen msgspec Struct) so the parent can check what "
                        "comes back")
    rtype = hints["return"]
    rtype = type(None) if rtype is None else rtype
    expected = getattr(rtype, "__name__", None) if isinstance(rtype, type) else None
    expected = expected or repr(rtype).replace("typing.", "")
    where = f"{name}: its return annotation {expected}"
    try:
        info = mi.type_info(rtype)
    except Exception as e:
        raise InvalidCall(f"{where} is not a type msgspec can decode: {e}") from None
    _refuse_open_types(info, where, set())
    try:
        _check_type(info, where)
    except ipc.InterfaceError as e:
        raise InvalidCall(str(e)) from None
    return expected, msgspec.msgpack.Decoder(rtype, strict=True)


# ------------------------------------------------------------------ the executor

class _Item:
    __slots__ = ("decoder", "expected", "future", "name", "task")

    def __init__(self, future: _Future, name: str, task: bytes, expected: str,
                 decoder: msgspec.msgpack.Decoder[Any]) -> None:
        self.future = future
        self.name = name
        self.task = task
        self.expected = expected
        self.decoder = decoder


class _Future(concurrent.futures.Future[Any]):
    """A Future whose successful cancel() is reported at once to wait()/as_completed()
    (which only see a cancellation once set_running_or_notify_cancel() is called)."""

    _owner: SandboxExecutor

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._owner._sweep_cancelled_soon()
        return True


class SandboxExecutor(concurrent.futures.Executor):
    """See the module docstring and docs/executor.md.

    max_workers: workers in the pool (default: the CPUs this process may use).
    profile: each worker's profile (default python-worker: compute, no files, no exec).
    preload: modules whose functions you submit, imported by every worker before it
    locks down (zygote: by the zygote; fork: by this process before forking).
    start_method: "zygote" (default) or "fork".
    call_timeout: seconds a call may take (including a wait for a replacement worker);
    past it the worker is killed and the future fails with DeadlineExceeded.
    max_tasks_per_worker: a worker is replaced after this many calls.
    restart: the pool's RestartPolicy. supervisor_kwargs go to Supervisor().
    """

    def __init__(self, max_workers: int | None = None, *,
                 profile: str | Profile = "python-worker",
                 preload: Sequence[str] = (), start_method: str = "zygote",
                 call_timeout: float | None = None, max_tasks_per_worker: int | None = None,
                 restart: RestartPolicy | None = None, **supervisor_kwargs: Any) -> None:
        import importlib
        import os

        from warden.supervisor.pool import RestartPolicy
        from warden.supervisor.sync import SyncSupervisor
        if start_method not in ("zygote", "fork"):
            raise InvalidArgument(f"SandboxExecutor(start_method={start_method!r}): expected "
                             "'zygote' or 'fork' (a 'spawn' worker would have to import the "
                             "submitted function's module after it locked down)")
        workers = max_workers if max_workers is not None else len(os.sched_getaffinity(0))
        if workers < 1:
            raise InvalidArgument(f"SandboxExecutor(max_workers={max_workers}): must be >= 1")
        for module in preload:  # here, so a typo fails now and fork workers inherit them
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise InvalidArgument(f"SandboxExecutor(preload=[{module!r}]): cannot import it: "
                                 f"{e}") from None
        self._loaded = frozenset(preload)
        self._slots = workers
        self._lock = threading.Lock()
        self._shut = False
        self._closed = threading.Event()
        self._closing = False
        self._decoders: dict[Callable[..., Any],
                             tuple[str, str, msgspec.msgpack.Decoder[Any]]] = {}
        self._pending: deque[_Item] = deque()  # only touched on the supervisor's loop
        self._running = 0
        zygote_preload = (*supervisor_kwargs.pop("zygote_preload", ()),
                          "warden.supervisor.executor",
                          *preload)
        self._sync: SyncSupervisor = SyncSupervisor(
            start_method=start_method, zygote_preload=zygote_preload, **supervisor_kwargs)
        try:
            self._sync.__enter__()
            self.pool: Pool[ExecutorWorker] = self._sync.pool(
                ExecutorWorker, TARGET, name="executor", size=workers, profile=profile,
                restart=restart or RestartPolicy(), call_timeout=call_timeout,
                max_calls_per_worker=max_tasks_per_worker).pool
        except BaseException:
            self._sync.close()
            raise
        self._loop = self._sync._loop
        self._drained: asyncio.Event | None = None  # made on the loop by shutdown()

    @property
    def supervisor(self) -> Supervisor:
        """The Supervisor running the workers (its events: `.subscribe(callback)`)."""
        sup = self._sync.supervisor
        if sup is None:
            raise NotRunning("the executor is shut down")
        return sup

    # ------------------------------------------------------------ submit
    def submit(self, fn: Callable[P, R], /, *args: P.args,
               **kwargs: P.kwargs) -> concurrent.futures.Future[R]:
        """Schedule fn(*args, **kwargs) in a sandboxed worker; TypeError (now) if fn cannot
        be sent by reference or has no checkable return annotation. Typed like
        Executor.submit: a type checker checks the arguments against fn's and gives the
        future fn's result type (which is what the worker's reply is checked against)."""
        name, expected, decoder = self._check(fn)
        try:
            task = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            raise InvalidCall(f"{name}: its arguments cannot be pickled: {e}") from None
        future = _Future()
        future._owner = self
        with self._lock:
            if self._shut:
                raise NotRunning("cannot schedule new futures after shutdown")
            self._loop.call_soon_threadsafe(self._enqueue, _Item(future, name, task, expected,
                                                                 decoder))
        return future

    def _check(self, fn: Callable[..., Any]) -> tuple[str, str, msgspec.msgpack.Decoder[Any]]:
        """fn's name, result type and decoder; TypeError if a worker cannot run it."""
        checked = self._decoders.get(fn)
        if checked is None:
            name = _reference(fn)
            if fn.__module__ not in self._loaded:
                raise InvalidCall(f"{name}: its module {fn.__module__!r} is not loaded in the "
                                "workers; name it in SandboxExecutor(preload=[...]) (a "
                                "sandboxed worker cannot import modules once it has locked "
                                "down)")
            checked = self._decoders[fn] = (name, *result_decoder(fn, name))
        return checked

    # ------------------------------------------------------------ on the loop
    def _enqueue(self, item: _Item) -> None:
        self._pending.append(item)
        self._pump()

    def _pump(self) -> None:
        """Start pending items while a worker slot is free: a future turns RUNNING (and can
        no longer be cancelled) only when its call is handed to the pool."""
        while self._running < self._slots and self._pending:
            item = self._pending.popleft()
            if not item.future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            self._running += 1
            self._loop.create_task(self._run(item))
        self._check_drained()

    async def _run(self, item: _Item) -> None:
        from warden.supervisor.handle import WorkerDied

        def check(worker_id: str, reply: Returned | Raised) -> Returned | Raised | Any:
            if isinstance(reply, Raised):
                return reply
            try:
                return _Value(item.decoder.decode(reply.value))
            except msgspec.DecodeError as e:  # ValidationError is a DecodeError
                raise BadResult(worker_id, item.name, item.expected, str(e)) from None

        try:
            try:
                out = await self.pool.call("run", item.task, check_result=check)
            except WorkerDied as e:
                raise WorkerDied(e.worker_id, item.name, e.status) from None
            except DeadlineExceeded as e:
                raise DeadlineExceeded(f"{item.name}(): {e}") from None
            if isinstance(out, Raised):
                raise TaskError(item.name, out.type_name, out.message)
        except BaseException as e:
            item.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
        else:
            item.future.set_result(out.value)
        finally:
            self._running -= 1
            self._pump()

    def _sweep_cancelled_soon(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: every future has finished
            self._loop.call_soon_threadsafe(self._sweep_cancelled)

    def _sweep_cancelled(self) -> None:
        keep: deque[_Item] = deque()
        for item in self._pending:
            if item.future.cancelled():
                item.future.set_running_or_notify_cancel()  # wakes wait()/as_completed()
            else:
                keep.append(item)
        self._pending = keep
        self._check_drained()

    def _cancel_pending(self) -> None:
        while self._pending:
            item = self._pending.popleft()
            item.future.cancel()
            item.future.set_running_or_notify_cancel()
        self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._pending and self._running == 0:
            self._drained.set()

    async def _drain(self) -> None:
        import asyncio
        self._drained = asyncio.Event()
        self._check_drained()
        await self._drained.wait()

    # ------------------------------------------------------------ shutdown
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new submissions; with cancel_futures, pending calls are cancelled. The pool
        and the supervisor close once the remaining calls end (wait=True: before this
        returns), leaving no process behind."""
        with self._lock:
            self._shut = True
            start = not self._closing
            self._closing = True
        if start:
            if cancel_futures:
                self._loop.call_soon_threadsafe(self._cancel_pending)
            if wait:
                self._close()
            else:
                threading.Thread(target=self._close, name="warden-executor-shutdown").start()
        elif cancel_futures and not self._closed.is_set():
            self._loop.call_soon_threadsafe(self._cancel_pending)
        if wait:
            self._closed.wait()

    def _close(self) -> None:
        try:
            self._sync._run(self._drain())
        finally:
            self._sync.close()
            self._closed.set()


class _Value:
    """A decoded result (kept apart from the Raised reply whatever the user's type is)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

