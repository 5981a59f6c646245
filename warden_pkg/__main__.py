"""`python -m warden` is the `warden` command."""

from warden.supervisor.cli import entry

entry()
