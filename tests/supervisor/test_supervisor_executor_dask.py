"""A dask worker whose tasks run in warden sandboxes (DaskSandboxExecutor on a LocalCluster).

Tasks annotated `executor="sandbox"` run in sandboxed workers with their results
validated; a task that crashes, lies about its result or cannot be sent fails as
that task, and the dask worker and the other tasks carry on.
"""

from __future__ import annotations

import os

import pytest

from tests.supervisor import executor_tasks as tasks
from tests.supervisor.util import children, zombie_children
from warden.supervisor import BadResult, TaskError, WorkerDied
from warden.supervisor.pool import RestartPolicy
from warden.supervisor.sandbox import PreflightError

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from warden.supervisor.dask_executor import DaskSandboxExecutor  # noqa: E402

TOLERANT = RestartPolicy("on-failure", backoff=0.01, max_backoff=0.05, crash_loop_limit=1000)


def test_dask_tasks_run_sandboxed_and_fail_alone() -> None:
    try:
        ex = DaskSandboxExecutor(max_workers=2, preload=["tests.supervisor.executor_tasks"],
                                 restart=TOLERANT)
    except PreflightError as e:
        pytest.skip(str(e))
    try:
        with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                      dashboard_address=None,
                                      executor={"sandbox": ex}) as cluster, \
                distributed.Client(cluster) as client:
            (address,) = client.scheduler_info()["workers"]
            with dask.annotate(executor="sandbox"):
                inside = client.submit(tasks.whoami, pure=False)
                crash = client.submit(tasks.segfault, pure=False)
                liar = client.submit(tasks.lies, 3)
                raised = client.submit(tasks.raises, "nope")
                unchecked = client.submit(tasks.returns_any, 1)
                good = [client.submit(tasks.square, i) for i in range(6)]
                chained = client.submit(tasks.total, good)  # dependencies resolved by dask
            outside = client.submit(tasks.whoami, pure=False)  # the default thread pool

            assert inside.result()[0] == 1  # pid 1 of its own PID namespace
            assert outside.result()[0] == os.getpid()  # not sandboxed
            with pytest.raises(WorkerDied, match=r"ended during tests.supervisor."
                               r"executor_tasks.segfault\(\): killed by signal SIGSEGV"):
                crash.result()
            with pytest.raises(BadResult, match=r"lies\(\) returned a value that is not int: "
                               r"Expected `int`, got `str`"):
                liar.result()
            with pytest.raises(TaskError, match=r"raises\(\) raised ValueError in its "
                               r"sandbox: nope"):
                raised.result()
            with pytest.raises(TypeError, match=r"returns_any: its return annotation Any "
                               r"lets any value through"):
                unchecked.result()
            assert [f.result() for f in good] == [i * i for i in range(6)]
            assert chained.result() == sum(i * i for i in range(6))
            # the dask worker carried on: same worker, still taking sandboxed tasks
            assert list(client.scheduler_info()["workers"]) == [address]
            with dask.annotate(executor="sandbox"):
                assert client.submit(tasks.total, [1, 2, 3]).result() == 6
    finally:
        ex.shutdown(wait=True)  # the dask worker already did; a second call just waits
    assert children() == set() and zombie_children() == []
