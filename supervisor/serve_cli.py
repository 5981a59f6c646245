"""`warden serve CONFIG.toml` and `warden status CONFIG.toml` (see supervisor/serve.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import NoReturn

import click

from warden.errors import EXIT_SETUP
from warden.supervisor.sandbox.hostpath import HostPathError
from warden.supervisor.serve import query_status
from warden.supervisor.serve_config import ConfigError, load_config


def _refused(e: ConfigError | HostPathError) -> NoReturn:
    """A config or path that cannot be used: its diagnostic (file:line:col, the line,
    a caret, as profile errors print), and EXIT_SETUP like every failure to set up."""
    click.echo(f"warden: {e}" if not isinstance(e, ConfigError) or not e.line else str(e),
               err=True)
    sys.exit(EXIT_SETUP)


@click.command("serve")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="log every worker event")
def serve_command(config: str, verbose: bool) -> None:
    """Run the worker pools described in CONFIG (TOML) until SIGTERM/SIGINT.

    SIGUSR1 logs a status snapshot; `warden status CONFIG` asks for one.
    """
    from warden.supervisor.serve import serve

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="warden serve: %(message)s", stream=sys.stderr)
    logging.getLogger("warden.serve").setLevel(logging.INFO)
    try:
        cfg = load_config(config)
        code = asyncio.run(serve(cfg))
    except ConfigError as e:
        _refused(e)
    sys.exit(code)


@click.command("status")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--socket", "sock", help="the server's status socket (instead of CONFIG)")
def status_command(config: str | None, sock: str | None) -> None:
    """Print the status of a running `warden serve CONFIG` as JSON."""
    if (config is None) == (sock is None):
        raise click.UsageError("give CONFIG or --socket PATH")
    try:
        path = sock if sock is not None else load_config(config).status_socket  # type: ignore[arg-type]
        snap = query_status(path)
    except (ConfigError, HostPathError) as e:
        _refused(e)
    except OSError as e:
        raise click.ClickException(f"no server answers on {path}: {e.strerror or e}") from None
    click.echo(json.dumps(snap, indent=2, sort_keys=True))
