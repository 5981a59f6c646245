"""A short, bounded atheris run of the profile harness (longer: run it by hand)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.interpreter import PYTHON, python_env

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[2]


def test_bounded_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    env = python_env(str(ROOT))
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [PYTHON, str(ROOT / "tests/profiles/fuzz/fuzz_profile.py"), "--seeds", str(corpus),
         "-atheris_runs=1500", "-max_len=8192", f"-artifact_prefix={tmp_path}/", "-seed=4242",
         str(corpus)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 1500 " in proc.stderr
    assert not list(tmp_path.glob("crash-*"))
