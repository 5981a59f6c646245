"""`warden profile ...` commands."""

from __future__ import annotations

import click


@click.group("profile")
def profile_group() -> None:
    """Write, check, inspect and share sandbox profiles."""
