"""The profiles suite's rules: every test sees an empty user search path.

A name that is not a built-in is looked up on $WARDEN_PROFILE_PATH and in
$XDG_CONFIG_HOME/warden/profiles; a file there named like a built-in is refused.
So the developer's own profiles (a ~/.config/warden/profiles/default.toml, a
WARDEN_PROFILE_PATH in the shell) would change what these tests load. Each test
starts with neither; a test that needs a search path sets its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_user_profiles(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                      ) -> None:
    monkeypatch.delenv("WARDEN_PROFILE_PATH", raising=False)
    empty: Path = tmp_path_factory.getbasetemp() / "no-user-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(empty))
