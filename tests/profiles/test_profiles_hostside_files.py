"""Profile files are host paths too: whatever is at one when warden reads it, the read
neither blocks, nor reads without end, nor fills the supervisor's memory.

The loader checks that a profile path is a file (stat) and then reads it: a FIFO,
a link to a device or a sparse file of gigabytes, put there by anyone who can write
a directory profiles are looked up in (an earlier sandbox with a writable bind of
a checkout, say) between the check and the read, or named by an include, must end
in a one-line error. Each read runs in a child interpreter under a memory limit and
a timeout, so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import PYTHON, supervisor_env

READ = """
import sys
from warden.profiles import probe
try:
    probe.read(sys.argv[1])
except OSError as e:
    print("refused:", e)
else:
    print("read")
"""
AS_LIMIT = 1 << 30  # far more than warden needs to refuse, far less than the files hold


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _plant(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "planted.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse 4G file":
        with open(path, "wb") as f:
            f.truncate(4 << 30)
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "sparse 4G file", "directory"])
def test_reading_a_profile_path_never_blocks_or_reads_without_end(tmp_path: Path,
                                                                  kind: str) -> None:
    path = _plant(tmp_path, kind)
    try:
        r = subprocess.run([PYTHON, "-c", READ, str(path)], capture_output=True, text=True,
                           timeout=30, preexec_fn=_limited, env=supervisor_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a {kind} as a profile blocked")
    assert r.returncode == 0 and r.stdout.startswith("refused: "), (r.stdout, r.stderr[-800:])
    assert "Errno" not in r.stdout  # one sentence naming the file
    assert str(path.resolve()) in r.stdout or kind == "link to /dev/zero"


def test_an_include_of_a_giant_file_is_one_line_of_error(tmp_path: Path) -> None:
    """The CLI, end to end: before, a MemoryError traceback (or the memory of the host)."""
    _plant(tmp_path, "sparse 4G file")
    (tmp_path / "mine.toml").write_text('include = ["planted.toml"]\n')
    r = subprocess.run([PYTHON, "-m", "warden", "run", "-p", str(tmp_path / "mine.toml"),
                        "--", "/bin/true"], capture_output=True, text=True, timeout=60,
                       env={**supervisor_env(), "WARDEN_NO_CACHE": "1"}, preexec_fn=_limited,
                       cwd=tmp_path)
    assert r.returncode == 125, r.stderr[-800:]
    assert "Traceback" not in r.stderr and "larger than 16M, which no profile is" in r.stderr


def test_an_ordinary_profile_through_a_link_still_loads(tmp_path: Path) -> None:
    """The control: profiles linked into place (dotfile managers do) are still read."""
    from warden.profiles import load_profile

    real = tmp_path / "real.toml"
    real.write_text('extends = "default"\ndescription = "linked"\n')
    (tmp_path / "link.toml").symlink_to(real)
    assert load_profile(str(tmp_path / "link.toml")).description == "linked"
