"""The `warden` command: one click group; each concern registers its own commands.

Usage errors of every command (an unknown flag, a bad value, a missing
argument) exit with warden.errors.EXIT_SETUP, like any other failure to set up,
so a program's own exit code 2 stays its own.

Sub-commands are registered by name and imported only when one is invoked (or
when help lists them all), so `warden run` does not load the profile tools,
the serve machinery or asyncio just to start.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import click

from warden.errors import EXIT_SETUP
from warden.supervisor.startup import pause_gc, start_up_done

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

@contextlib.contextmanager
def _usage_exits_setup() -> Iterator[None]:
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
        with _usage_exits_setup():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_exits_setup():
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


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="warden")
def main() -> None:
    """warden: run untrusted programs and workers in Linux sandboxes."""
