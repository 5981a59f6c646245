"""The `warden` command: one click group; each concern registers its own commands.

Usage errors of every command (an unknown flag, a bad value, a missing
argument) exit with warden.errors.EXIT_SETUP, like any other failure to set up,
so a program's own exit code 2 stays its own.

Sub-commands are registered by name and imported only when one is invoked (or
when help lists them all), so `warden run` does not load the profile tools,
the serve machinery or asyncio just to start.

`entry()` is the command (the console script and `python -m warden`): `warden
run` with plain arguments is read by run's lean parser, generated from the same
option declarations as its click options, and never imports click; everything
else, help and every error included, goes to the click group `main`, made on
first use.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from warden.supervisor.startup import pause_gc, start_up_done

if TYPE_CHECKING:
    from collections.abc import Sequence

# name -> "module:attribute"; each command lives beside the code it drives.
COMMANDS = {
    "call": "warden.supervisor.call_cli:call_command",
    "profile": "warden.profiles.cli:profile_group",
    "run": "warden.supervisor.run_cli:run_command",
    "serve": "warden.supervisor.serve_cli:serve_command",
    "status": "warden.supervisor.serve_cli:status_command",
}
# Commands that call start_up_done() themselves once their start-up is over.
START_UP_WITHOUT_GC = frozenset({"run"})


def _make_group() -> Any:
    import contextlib
    import importlib
    from collections.abc import Iterator

    import click

    from warden.errors import EXIT_SETUP

    @contextlib.contextmanager
    def usage_exits_setup() -> Iterator[None]:
        try:
            yield
        except click.UsageError as e:
            e.exit_code = EXIT_SETUP  # type: ignore[misc]  # click reads it from the instance
            raise

    class LazyGroup(click.Group):
        """A group whose sub-commands are imported on first use.

        While it dispatches, garbage collection is paused: start-up builds
        thousands of long-lived objects (modules, classes, the profile) and no
        cycles, so collecting then only costs time (~4 ms of `warden run`).
        """

        def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.lazy = dict(lazy)

        def main(self, *args: Any, **kwargs: Any) -> Any:
            pause_gc()
            try:
                return super().main(*args, **kwargs)
            finally:
                start_up_done()

        # Usage errors (a bad flag or value, a missing argument) exit like every other
        # failure to set up, EXIT_SETUP, never click's 2, which is a program's own code.
        def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
            with usage_exits_setup():
                return super().make_context(*args, **kwargs)

        def invoke(self, ctx: click.Context) -> Any:
            with usage_exits_setup():
                return super().invoke(ctx)

        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted({*super().list_commands(ctx), *self.lazy})

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            if cmd_name not in self.commands and cmd_name in self.lazy:
                module, _, attr = self.lazy[cmd_name].partition(":")
                command = getattr(importlib.import_module(module), attr)
                if not isinstance(command, click.Command):
                    raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
                self.add_command(command, cmd_name)
            if cmd_name not in START_UP_WITHOUT_GC:
                start_up_done()
            return super().get_command(ctx, cmd_name)

    @click.group(cls=LazyGroup, lazy=COMMANDS,
                 context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="warden")
    def main() -> None:
        """warden: run untrusted programs and workers in Linux sandboxes."""

    return main


def __getattr__(name: str) -> Any:
    # `main`, the click group, is made on first use (it imports click).
    if name == "main":
        value = globals()["main"] = _make_group()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _completing() -> bool:
    """click's shell completion is asked for (`_WARDEN_COMPLETE=...`): click answers."""
    return any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)


def entry(args: Sequence[str] | None = None) -> Any:
    """The `warden` command line: `warden run` with plain arguments without click,
    everything else through the click group."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["run"] and not _completing():
        from warden.supervisor.run_cli import lean_main

        pause_gc()  # as the group does; run turns it back on when it starts supervising
        try:
            if lean_main(argv[1:]):
                return None  # pragma: no cover - run leaves through os._exit
        except BaseException:
            start_up_done()
            raise
    group = __getattr__("main")
    return group(argv if args is not None else None)
