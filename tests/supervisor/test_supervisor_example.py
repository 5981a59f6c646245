"""The thumbnailer example (what scripts/demo runs) does what examples/README.md says."""

from __future__ import annotations

import subprocess

from tests.interpreter import PYTHON, python_env
from tests.supervisor.util import WORKTREE


def test_thumbnailer_example() -> None:
    env = python_env(WORKTREE)
    r = subprocess.run([PYTHON, "-m", "examples.thumbnailer.service"], cwd=WORKTREE,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for name, size in (("cat.pgm", "64x48"), ("dog.pgm", "32x32"), ("bird.pgm", "20x20")):
        assert f"{name:12} ok: {size} -> 16x16 thumbnail" in out, out
    assert "steal.pgm    refused, worker killed: seccomp violation: openat(AT_FDCWD" in out
    assert "lie.pgm      refused, worker killed: bad_message" in out
    assert "Expected `int` <= 65535 - at `$.width`" in out
    assert "notes.txt    rejected by the decoder: not a binary PGM (P5) image" in out
    assert "served 3 thumbnails; 2 worker(s) replaced; 2 alive" in out
