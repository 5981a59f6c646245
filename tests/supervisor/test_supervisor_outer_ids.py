"""Outer ids come from one validated source for every start method and for `warden run`.

A hostile or mistaken WARDEN_OUTER_UID (0, the supervisor's own uid, not a
number) is refused with a sentence naming it, before any worker exists,
under spawn, zygote and fork alike; a valid one is what forked workers run as.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.interpreter import PYTHON, python_env
from tests.supervisor.util import CALC, METHODS, PRELOAD, children, run
from tests.supervisor.workers import Calc
from warden.supervisor import Supervisor
from warden.supervisor.sandbox import SpecError, build_spec, ids

ROOT = os.geteuid() == 0
OWN = os.getuid()


def _bad_values() -> list[tuple[str, str]]:
    """(WARDEN_OUTER_UID value, the error it must give)."""
    out = [("0", "WARDEN_OUTER_UID 0: must be an unprivileged id (not 0, below 4294967295)"),
           ("root", "WARDEN_OUTER_UID='root': not a numeric id"),
           ("4294967295", "WARDEN_OUTER_UID 4294967295: must be an unprivileged id (not 0, "
                          "below 4294967295)"),
           ("-7", "WARDEN_OUTER_UID -7: must be an unprivileged id (not 0, below 4294967295)")]
    if not ROOT:
        out.append((str(OWN), f"WARDEN_OUTER_UID {OWN}: must differ from the supervisor's "
                              "own uid"))
    return out


BAD = _bad_values()


@pytest.mark.parametrize(("value", "message"), BAD)
def test_build_spec_refuses_a_bad_outer_uid(value: str, message: str) -> None:
    from tests.sandbox.sandbox_util import PERMISSIVE, TEST_PROFILE

    with pytest.raises(SpecError) as e:
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=PERMISSIVE,
                   source_env={"WARDEN_OUTER_UID": value})
    assert str(e.value) == message


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("value", "message"), BAD[:2])
def test_every_start_method_refuses_a_bad_outer_uid(method: str, value: str, message: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    before = children()

    async def main() -> None:
        # The zygote's own sandbox reads it when the supervisor starts; spawn and
        # fork when a worker starts. Either way: refused, no worker.
        with pytest.raises(ValueError) as e:
            async with Supervisor(start_method=method, zygote_preload=PRELOAD) as sup:
                await sup.spawn(Calc, CALC)
        assert str(e.value) == message

    monkeypatch.setenv("WARDEN_OUTER_UID", value)
    run(main())
    assert children() <= before


def test_forked_workers_run_as_the_validated_outer_id(monkeypatch: pytest.MonkeyPatch) -> None:
    if not ROOT:
        # An ordinary user's forked workers keep its ids; fixed ones are refused.
        monkeypatch.setenv("WARDEN_OUTER_UID", "2000111")
        with pytest.raises(ValueError, match=r"^WARDEN_OUTER_UID 2000111: as uid \d+ warden can "
                                             r"map only your own uid"):
            ids.forked_worker_ids(os.environ)
        return
    monkeypatch.setenv("WARDEN_OUTER_UID", "2000111")

    async def main() -> None:
        async with Supervisor(start_method="fork") as sup:
            w = await sup.spawn(Calc, CALC)
            with open(f"/proc/{w.pid}/status") as f:
                uid_line = next(ln for ln in f if ln.startswith("Uid:"))
            assert set(map(int, uid_line.split()[1:])) == {2000111}
            assert await w.remote.square(n=7) == 49

    run(main())
    monkeypatch.delenv("WARDEN_OUTER_UID")
    assert ids.forked_worker_ids(os.environ) == (ids.SHARED_ID, ids.SHARED_ID)


@pytest.mark.parametrize(("value", "message"), BAD)
def test_warden_run_refuses_a_bad_outer_uid_with_125(value: str, message: str) -> None:
    r = subprocess.run([PYTHON, "-m", "warden", "run", "--", "/bin/true"],
                       capture_output=True, text=True, timeout=60,
                       env={**python_env(), "WARDEN_OUTER_UID": value})
    assert r.returncode == 125, r
    assert r.stderr.strip().endswith(message), r.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("0:10", "--outer-uid-range 0:10: must lie within 1..4294967294 (never 0, nor 4294967295)"),
    ("5:0", "--outer-uid-range 5:0: COUNT must be at least 1"),
    ("65530:10", "--outer-uid-range 65530:10: covers id 65534, an account of /etc/passwd; "
                 "choose another range"),
    ("lots", "--outer-uid-range 'lots': expected START:COUNT, such as 2000000000:65536"),
])
def test_a_bad_outer_id_range_is_refused(text: str, message: str) -> None:
    from tests.sandbox.sandbox_util import PERMISSIVE, TEST_PROFILE

    if "65534" in message and not _has_nobody():
        pytest.skip("no account 65534 in /etc/passwd")
    with pytest.raises(SpecError) as e:
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=PERMISSIVE, outer_id_range=text,
                   source_env={})
    assert str(e.value) == message
    r = subprocess.run([PYTHON, "-m", "warden", "run", "--outer-uid-range", text, "--",
                        "/bin/true"], capture_output=True, text=True, timeout=60,
                       env=python_env())
    assert r.returncode == 125 and r.stderr.strip().endswith(message), r


def test_a_range_covering_the_supervisor_is_refused() -> None:
    if OWN:  # (root's 0 is below every range: the "0:10" case above)
        with pytest.raises(ids.OuterIdError,
                           match=rf"covers id {OWN}, the supervisor's own uid"):
            ids.check_range(OWN - 2, 5, "--outer-uid-range")
    with pytest.raises(ids.OuterIdError, match=r"^WARDEN_OUTER_ID_RANGE "):
        ids.choose({"WARDEN_OUTER_ID_RANGE": "1:x"})


def _has_nobody() -> bool:
    with open("/etc/passwd") as f:
        return any(line.split(":")[2:3] == ["65534"] for line in f)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
