"""Garbage collection paused while the `warden` command starts up.

Start-up builds thousands of long-lived objects (modules, classes, the
profile) and no cycles, so collecting then only costs time (~4 ms of `warden
run`). The command group pauses it while it dispatches; a command whose
start-up ends earlier (`run`, before it waits for its sandbox) turns it back
on itself. Its own module, so commands need not import the CLI group.
"""

from __future__ import annotations

import gc

_paused = False


def pause_gc() -> None:
    """Pause collection, unless something else already turned it off."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def start_up_done() -> None:
    """Turn garbage collection back on if pause_gc() paused it."""
    global _paused
    if _paused:
        _paused = False
        # What start-up built lives to the end: moved out of the collector's reach,
        # the first collection after enabling does not walk all of it (~10 ms).
        gc.freeze()
        gc.enable()
