"""Host paths named relative to the working directory mean the same file with and
without openat2.

Before Linux 5.6 warden resolves a host path one component at a time from an fd
(hostpath._open_walk). A relative path (`--file data.txt`) must start from the
working directory, as openat2(AT_FDCWD, ...) does, never from /: otherwise the same
option opens another file on an older kernel than on a newer one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warden.supervisor.sandbox import hostpath


@pytest.mark.parametrize("walk", [False, True], ids=["openat2", "walk"])
def test_a_relative_path_is_resolved_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walk: bool) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.txt").write_text("here")
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hostpath, "_openat2_missing", walk)
    fd = hostpath.open_input("sub/data.txt", "--file sub/data.txt")
    try:
        assert os.read(fd, 10) == b"here"
    finally:
        os.close(fd)
    with pytest.raises(hostpath.HostPathError, match="is a symbolic link"):
        hostpath.open_input("link/data.txt", "--file link/data.txt")
