"""Dask tasks in warden sandboxes: an executor for distributed.Worker.

    ex = DaskSandboxExecutor(max_workers=2, preload=["myapp.tasks"])
    worker = distributed.Worker(scheduler, executor={"sandbox": ex})   # or a LocalCluster's
    with dask.annotate(executor="sandbox"):                             # worker_kwargs
        fut = client.submit(myapp.tasks.parse, data)

A dask worker runs a task by submitting dask's own wrapper to the task's
executor: `executor.submit(_run_task_simple, task, data, delay)`. That
wrapper (timing, exception capture, the result record) is the dask worker's
trusted bookkeeping, so it runs here, in a thread of this process; only the
task's function goes to a sandbox, through SandboxExecutor.submit, so its
result is checked against its return annotation like any other. A failure
in the sandbox (TaskError, BadResult, WorkerDied, DeadlineExceeded) is
raised inside the wrapper, where dask records it as that task's failure;
the dask worker and its other tasks carry on. See docs/executor.md.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from warden.supervisor.executor import SandboxExecutor


class _InSandbox:
    """Stands in for a task's function: calls it in a sandbox and waits for the checked
    result (in a bookkeeping thread, never on the dask worker's event loop)."""

    def __init__(self, executor: SandboxExecutor, fn: Callable[..., Any]) -> None:
        self.executor = executor
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return SandboxExecutor.submit(self.executor, self.fn, *args, **kwargs).result()


class DaskSandboxExecutor(SandboxExecutor):
    """A SandboxExecutor that also understands the calls a distributed.Worker makes."""

    def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__(max_workers, **kwargs)
        self._bookkeeping = concurrent.futures.ThreadPoolExecutor(
            self._slots, thread_name_prefix="warden-dask")

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        from dask._task_spec import Task
        from distributed.worker import _run_task_simple
        if fn is not _run_task_simple:
            return super().submit(fn, *args, **kwargs)
        task, data, delay = args
        if type(task) is not Task or task.has_subgraph():
            raise TypeError(f"dask task {task.key!r} cannot run in a sandbox: only a task "
                            "that calls one function (client.submit, dask.delayed) can")
        # Checked now, so a function the sandbox cannot take fails this task at once.
        super()._check(task.func)
        sandboxed = Task(task.key, _InSandbox(self, task.func), *task.args, **task.kwargs)
        return self._bookkeeping.submit(_run_task_simple, sandboxed, data, delay)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._bookkeeping.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait, cancel_futures=cancel_futures)
