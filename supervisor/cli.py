"""The `warden` command: one click group; each concern registers its own commands.

Sub-commands are registered by name and imported only when one is invoked (or
when help lists them all), so `warden run` does not load the profile tools,
the serve machinery or asyncio just to start.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute"; each command lives beside the code it drives.
COMMANDS = {
    "profile": "profiles.cli:profile_group",
    "run": "supervisor.run_cli:run_command",
    "serve": "supervisor.serve_cli:serve_command",
    "status": "supervisor.serve_cli:status_command",
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="warden")
def main() -> None:
    """warden: run untrusted programs and workers in Linux sandboxes."""
