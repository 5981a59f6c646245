"""The README's first command, `scripts/demo`, runs to its end: the main job a fresh
machine is shown (a profile checked and explained, programs run sandboxed, a kill
named with how to allow the call, the embedded supervisor serving hostile uploads)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: scripts/demo installs what is "
                    "missing (system packages, the venv) as the fresh machine's root does")
def test_the_demo_runs_as_written() -> None:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = r.stdout + r.stderr
    assert "warden run exited with 159" in out
    assert 'allow = ["sysfs"]' in out  # --complain listed the refused call
    assert "served 3 thumbnails" in out
