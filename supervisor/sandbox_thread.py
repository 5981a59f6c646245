"""The one thread that starts sandboxes for the supervisor.

A sandbox dies with the thread that started it (its init's parent-death
signal fires when that thread exits), so every sandbox the supervisor starts
(the zygote, `spawn` workers, programs) is started from one thread that lives
as long as the supervisor does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from warden.supervisor.errors import NotRunning
from warden.supervisor.process import Reaper, SandboxProcess
from warden.supervisor.sandbox import Outcome, Sandbox, SandboxSpec
from warden.supervisor.sandbox import spawn as sandbox_spawn


class SandboxThread:
    """`await start(spec)`: sandbox.spawn() on the long-lived thread."""

    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper
        self._executor: concurrent.futures.ThreadPoolExecutor | None = \
            concurrent.futures.ThreadPoolExecutor(1, "warden-spawner")

    async def start(self, spec: SandboxSpec, cancelled_reason: str) -> Sandbox:
        """The started sandbox (SetupError if it could not be). If we are cancelled
        meanwhile, the sandbox it still makes is killed (`cancelled_reason`) and reaped,
        never left running unowned."""
        if self._executor is None:
            raise NotRunning("the supervisor is not running (its sandbox thread is closed)")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, sandbox_spawn, spec)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            def orphan(f: asyncio.Future[Sandbox]) -> None:
                if not f.cancelled() and f.exception() is None:
                    box = f.result()
                    box.kill(Outcome.KILLED, cancelled_reason)
                    self._reaper.reap_later(SandboxProcess(box))
            fut.add_done_callback(orphan)
            raise

    def close(self) -> None:
        """Wait for a start in progress, then end the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
