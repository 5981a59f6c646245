"""The `warden` command: one click group; each concern registers its own commands."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="warden")
def main() -> None:
    """warden: run untrusted programs and workers in Linux sandboxes."""


def _register() -> None:
    """Attach sub-commands; each lives beside the code it drives."""
    from profiles.cli import profile_group

    main.add_command(profile_group)
    from supervisor.run_cli import run_command; main.add_command(run_command)  # noqa: E702, I001
    from supervisor.serve_cli import serve_command; main.add_command(serve_command)  # noqa: E702, I001
    from supervisor.serve_cli import status_command; main.add_command(status_command)  # noqa: E702, I001


_register()
