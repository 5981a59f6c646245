"""Invariant 7: children do not inherit secrets. The supervisor holds a secret in its
memory and its environment; a worker of each start method searches itself for it.

spawn and zygote workers start from a fresh interpreter (the zygote before the
embedder's secrets exist), so they see neither. A `fork` worker is a copy of the
supervisor's memory (the embedder picks it knowingly: docs/supervisor.md), but never
of its environment: the worker's environment is built like every sandbox's.
"""

from __future__ import annotations

import os
import secrets

import pytest

from tests.supervisor.secret_workers import Probe
from tests.supervisor.util import PRELOAD, run
from warden.supervisor import Supervisor

MARKER = "WARDEN-TEST-SECRET-"
PROBE = "tests.supervisor.secret_workers:ProbeImpl"


@pytest.mark.parametrize("method", ["spawn", "zygote", "fork"])
def test_a_worker_finds_no_secret_of_the_supervisor(method: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[list[str], list[str]]:
        async with Supervisor(start_method=method,
                              zygote_preload=(*PRELOAD, "tests.supervisor.secret_workers")) as s:
            # The secrets exist only once the supervisor runs (as an embedder's would).
            in_memory = (MARKER + secrets.token_hex(16)).encode()
            monkeypatch.setenv("WARDEN_TEST_API_TOKEN", MARKER + secrets.token_hex(16))
            env_secret = os.environ["WARDEN_TEST_API_TOKEN"][len(MARKER):]
            w = await s.spawn(Probe, PROBE, profile="default")
            memory = await w.remote.in_memory(MARKER)
            environment = await w.remote.in_environment(MARKER)
            assert in_memory  # alive until here
            return ([h for h in memory if h in (in_memory[len(MARKER):].decode(), env_secret)],
                    [h for h in environment if h == env_secret])

    memory, environment = run(main())
    assert environment == [], "the worker inherited the supervisor's environment"
    if method != "fork":
        assert memory == [], "the worker can read the supervisor's memory"
    else:
        # Documented: a fork worker is a copy of the supervisor. Proves the probe works.
        assert memory, "the probe should find the fork worker's copy of the secret"
