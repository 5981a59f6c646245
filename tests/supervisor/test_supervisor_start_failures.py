"""A worker that cannot start says why: its own error text reaches the SpawnError and the
event, for every start method, and the supervisor (and the zygote) carry on. And what
is not a failure stays one: a `strict` worker may sleep."""

from __future__ import annotations

import pytest

from tests.supervisor.util import CALC, METHODS, PRELOAD, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor, events
from warden.supervisor.core import SpawnError
from warden.supervisor.sandbox import Outcome

CASES = [
    # a typo in the module's name
    ("tests.supervisor.workerz:CalcImpl",
     "ModuleNotFoundError: No module named 'tests.supervisor.workerz'"),
    # an attribute that does not exist
    ("tests.supervisor.workers:CalcImp",
     "AttributeError: module 'tests.supervisor.workers' has no attribute 'CalcImp'"),
    # the factory raises
    ("tests.supervisor.workers:BadOnStart", "RuntimeError: refusing to start"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("target", "said"), CASES)
def test_start_failure_carries_the_workers_own_error(method: str, target: str,
                                                     said: str) -> None:
    async def main() -> None:
        seen: list[events.Event] = []
        async with Supervisor(start_method=method, zygote_preload=PRELOAD) as s:
            s.subscribe(seen.append)
            with pytest.raises(SpawnError) as info:
                await s.spawn(Calc, target, profile="strict", worker_id="bad")
            assert said in str(info.value)
            assert "failed to start: it reported " in str(info.value)
            st = info.value.status
            assert st is not None and st.outcome is Outcome.SETUP_ERROR
            assert said in st.reason
            exited = [e for e in seen if isinstance(e, events.Exited) and e.worker_id == "bad"]
            assert len(exited) == 1 and said in exited[0].status.reason
            good = await s.spawn(Calc, CALC)  # the supervisor (and the zygote) carry on
            assert await good.remote.square(7) == 49
    run(main())


def test_the_reported_text_is_bounded() -> None:
    """The child's text is cut to its last 2,048 characters: the supervisor holds no
    more of it however long the child's error is."""
    from warden.supervisor import bootstrap

    long = "x" * 100_000 + "the end"
    text = bootstrap.decode_failure(bootstrap.encode_failure(long))
    assert text is not None and len(text) == bootstrap.MAX_FAILURE_CHARS
    assert text.endswith("the end")
    # a record over the cap, as a hostile child would send it, is not a failure text
    import msgspec
    forged = msgspec.msgpack.encode({"type": "start_failed", "error": "y" * 5000})
    assert bootstrap.decode_failure(forged) is None


@pytest.mark.parametrize("method", METHODS)
def test_a_strict_worker_may_sleep(method: str) -> None:
    """time.sleep (clock_nanosleep) is harmless: under `strict` it must not be fatal."""
    async def main() -> None:
        async with Supervisor(start_method=method, zygote_preload=PRELOAD) as s:
            w = await s.spawn(Calc, CALC, profile="strict")
            assert await w.remote.sleep(5) == 5
            assert await w.remote.square(3) == 9
    run(main())
