"""The package installs and its entry point answers."""

import subprocess
import sys


def test_warden_help_lists_profile_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "warden", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "profile" in out
