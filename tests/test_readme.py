"""The README's quick-tour snippet runs as written (a real supervisor, zygote and worker)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.interpreter import PYTHON, python_env

ROOT = Path(__file__).resolve().parents[1]


def test_quick_tour_python_snippet_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    snippet = next(b for b in blocks if "supervisor.Supervisor(" in b)
    env = python_env(str(ROOT))
    out = subprocess.run([PYTHON, "-c", snippet], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # The 4x4 upload comes back as a validated 4x4 thumbnail.
    assert out.stdout.split() == ["4", "4"]
