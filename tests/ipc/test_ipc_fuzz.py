"""A short, bounded atheris run of the decoder harness (the long run: scripts/fuzz-ipc)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.interpreter import PYTHON, python_env
from tests.ipc.helpers import ROOT

pytest.importorskip("atheris")


def test_bounded_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    env = python_env(ROOT)
    proc = subprocess.run(
        [PYTHON, os.path.join(ROOT, "tests/ipc/fuzz/fuzz_decoder.py"),
         "--seeds", str(tmp_path / "corpus"), "-atheris_runs=4000", "-max_len=2048",
         f"-artifact_prefix={tmp_path}/", "-seed=12345", str(tmp_path / "corpus")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 4000 " in proc.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_bounded_channel_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    """Frame sequences with descriptors through a real socket pair (fuzz_channel.py):
    nothing but BadMessage/CutOff, and no descriptor outlives an input."""
    proc = subprocess.run(
        [PYTHON, os.path.join(ROOT, "tests/ipc/fuzz/fuzz_channel.py"), "-atheris_runs=6000",
         "-max_len=2048", f"-artifact_prefix={tmp_path}/", "-seed=4242", str(tmp_path)],
        capture_output=True, text=True, env=python_env(ROOT), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 6000 " in proc.stderr
    assert not list(tmp_path.glob("crash-*"))
