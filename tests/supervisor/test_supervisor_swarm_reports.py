"""A child can neither forge nor withdraw its report.

Text a worker chose (its start failure, a field name in a reply, its stdout and
stderr) never reaches a supervisor log record, an event, an error or
Status.describe() as a line of its own: control characters are quoted, the length is
bounded, and the worker's own output never shares a stream with the supervisor's
records. An exit code that looks like a setup error is still the worker's exit.
"""

from __future__ import annotations

import logging
import re

import pytest

from tests.supervisor.swarm_workers import FORGED_LINE, Swarm
from tests.supervisor.util import METHODS, PRELOAD, run
from warden.supervisor import Supervisor, WorkerDied
from warden.supervisor.core import SpawnError
from warden.supervisor.events import Event, Exited, describe
from warden.supervisor.sandbox import Outcome

SWARM_PRELOAD = (*PRELOAD, "tests.supervisor.swarm_workers")
SW = "tests.supervisor.swarm_workers"
# What no record may hold: a line break, an escape sequence, any other control character.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_TEXT = 8192  # far above any honest record, far below what a worker could send


def records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("warden")]


def check_text(text: str, where: str) -> None:
    assert not CONTROL.search(text), f"{where} holds a control character: {text!r}"
    assert len(text) <= MAX_TEXT, f"{where} is {len(text)} characters long"


def check_all(caplog: pytest.LogCaptureFixture, events: list[Event], *texts: str) -> None:
    for m in records(caplog):
        check_text(m, "a log record")
    for e in events:
        if isinstance(e, Exited):
            check_text(e.status.describe(), "Status.describe()")
            check_text(describe(e.status), "events.describe()")
            check_text(e.status.reason or "", "Status.reason")
        for name in ("reason",):
            value = getattr(e, name, None)
            if isinstance(value, str):
                check_text(value, f"{type(e).__name__}.{name}")
    for t in texts:
        check_text(t, "an error")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", ["ForgingStart", "HugeForgingStart"])
def test_a_start_failure_cannot_forge_a_log_line(method: str, target: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    events: list[Event] = []

    async def main() -> str:
        async with Supervisor(start_method=method, zygote_preload=SWARM_PRELOAD) as s:
            s.subscribe(events.append)
            with pytest.raises(SpawnError) as info:
                await s.spawn(Swarm, f"{SW}:{target}", profile="strict", worker_id="forger")
            st = info.value.status
            assert st is not None and st.outcome is Outcome.SETUP_ERROR
            # the child's own words are still there, quoted
            assert "refusing to start" in str(info.value)
            assert "\\n" in str(info.value)
            return str(info.value)

    with caplog.at_level(logging.INFO, logger="warden"):
        error = run(main())
    check_all(caplog, events, error)
    assert any(e.worker_id == "forger" for e in events if isinstance(e, Exited))


@pytest.mark.parametrize("method", ["zygote", "fork"])
def test_a_bad_reply_cannot_forge_a_log_line(method: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A reply naming an unknown field whose name holds a line break and an escape."""
    events: list[Event] = []

    async def main() -> str:
        async with Supervisor(start_method=method, zygote_preload=SWARM_PRELOAD) as s:
            s.subscribe(events.append)
            w = await s.spawn(Swarm, f"{SW}:SwarmImpl", profile="default")
            with pytest.raises(WorkerDied) as died:
                await w.remote.info("forge_field")
            st = await w.wait()
            assert st.outcome is Outcome.BAD_MESSAGE
            assert "unknown field" in (st.reason or "")
            return str(died.value)

    with caplog.at_level(logging.INFO, logger="warden"):
        error = run(main())
    check_all(caplog, events, error)


@pytest.mark.parametrize("method", METHODS)
def test_a_workers_stdio_is_not_the_supervisors(method: str,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """Lines a worker writes on its stdout and stderr never reach the supervisor's, where
    its log records may go: fds 0-2 of every Python worker lead to /dev/null."""
    async def main() -> int:
        async with Supervisor(start_method=method, zygote_preload=SWARM_PRELOAD) as s:
            w = await s.spawn(Swarm, f"{SW}:SwarmImpl", profile="default")
            assert await w.remote.act("stderr_forgery") == 0
            return int(await w.remote.act("stdio_is"))

    where = run(main())
    out, err = capfd.readouterr()
    assert FORGED_LINE not in out and FORGED_LINE not in err
    assert where == 0b111


@pytest.mark.parametrize("method", METHODS)
def test_exit_codes_that_look_like_setup_errors_are_the_workers_own(method: str) -> None:
    async def main() -> None:
        async with Supervisor(start_method=method, zygote_preload=SWARM_PRELOAD) as s:
            w = await s.spawn(Swarm, f"{SW}:SwarmImpl", profile="default")
            with pytest.raises(WorkerDied):
                await w.remote.act("exit", 125)
            st = await w.wait()
            assert (st.outcome, st.returncode) == (Outcome.EXITED, 125), st
            # before it is ready, with no record of its own: a setup error, and says so
            with pytest.raises(SpawnError) as info:
                await s.spawn(Swarm, f"{SW}:ExitSetupCode", profile="default")
            st2 = info.value.status
            assert st2 is not None and st2.outcome is Outcome.SETUP_ERROR
            assert "before it was ready" in str(info.value)
    run(main())
