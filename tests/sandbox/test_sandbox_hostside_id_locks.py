"""The outer-id lock directory: what is planted there is skipped, never followed or trusted.

Each live sandbox holds flock on the file named after its outer uid in warden's lock
directory (/run/warden/ids as root). Whoever could write there (a sandbox given an
owned bind of /run, a careless script) may leave other things under those names: a
link to a file of the host's, a FIFO, a directory, a hard link. warden must not
follow the link or open the FIFO for writing, and one such name must not stop every
later sandbox from starting: that id is skipped and the next one is used.
"""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.sandbox.sandbox_util import MODE, PY, collect, start
from warden.supervisor.sandbox import Outcome, ids

SLEEP = [PY, "-I", "-S", "-c", "pass"]


def test_planted_names_in_the_lock_directory_are_skipped(tmp_path: object) -> None:
    if MODE != "root":
        pytest.skip("needs root: an ordinary user's ids come from /etc/subuid, and the "
                    "lock directory is then private to the user")
    base = 2_100_100_000 + (os.getpid() % 10_000) * 8  # a range of this run's own
    # The directory exists once any sandbox ran as root (this session's did).
    dfd, lock_dir = ids._lock_dir_fd()
    victim = os.path.join(str(tmp_path), "victim")
    with open(victim, "w") as f:
        f.write("host data\n")
    planted = [str(base + i) for i in range(4)]
    os.symlink(victim, planted[0], dir_fd=dfd)
    os.mkdir(planted[1], 0o700, dir_fd=dfd)
    os.mkfifo(planted[2], 0o600, dir_fd=dfd)
    os.link(victim, os.path.join(lock_dir, planted[3]))
    try:
        box, out, err = start(SLEEP, outer_id_range=f"{base}:5")
        result = collect(box, out, err)
        assert box.outer_ids == (base + 4, base + 4)
        assert result.status.outcome is Outcome.OK, result
        with open(victim) as f:
            assert f.read() == "host data\n"
        assert os.stat(victim).st_nlink == 2
    finally:
        for name in [*planted, str(base + 4)]:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=dfd)
