"""The profile search path as an ordinary uid: directories it may not read count as absent.

Each case runs in a forked child that really drops to uid/gid 4242 (no mocks):
root-owned 0700 directories on the search path then fail with EACCES, which
used to escape as an uncaught PermissionError.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.profiles.unpriv_util import as_unprivileged
from warden.profiles import ProfileError, load_profile
from warden.profiles.loader import find

NOT_FOUND = ('default|warden: error: no profile named "mine" '
             "(expected one of default, network-client, python-worker, strict)")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")


def private_tree(root: Path) -> Path:
    """A root-owned 0700 directory holding a valid profile named mine.toml."""
    (root / "warden" / "profiles").mkdir(parents=True)
    (root / "warden" / "profiles" / "mine.toml").write_text('description = "x"\n')
    (root / "profiles").mkdir()
    (root / "profiles" / "mine.toml").write_text('description = "x"\n')
    root.chmod(0o700)
    return root


def loads_default_and_misses_cleanly() -> str:
    name = load_profile("default").name
    try:
        find("mine")
    except ProfileError as e:
        return f"{name}|{str(e).splitlines()[0]}"
    return f"{name}|found mine"


@pytest.fixture()
def tmp_path() -> Iterator[Path]:
    """Like pytest's, but reachable by uid 4242 (pytest's own base directory is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="warden-perms-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


@pytest.fixture()
def cwd(tmp_path: Path) -> Path:
    d = tmp_path / "cwd"
    d.mkdir()
    d.chmod(0o755)
    return d


def test_unreadable_home_config_is_absent(tmp_path: Path, cwd: Path) -> None:
    home = tmp_path / "home"
    private_tree(home / ".config")  # ~/.config is root's, 0700
    home.chmod(0o755)
    got = as_unprivileged(cwd, {"HOME": str(home)}, loads_default_and_misses_cleanly)
    assert got == NOT_FOUND, got


def test_unreadable_xdg_config_home_is_absent(tmp_path: Path, cwd: Path) -> None:
    xdg = private_tree(tmp_path / "xdg")
    got = as_unprivileged(cwd, {"HOME": "/root", "XDG_CONFIG_HOME": str(xdg)},
                          loads_default_and_misses_cleanly)
    assert got == NOT_FOUND, got


def test_unreadable_local_profiles_dir_is_absent(tmp_path: Path, cwd: Path) -> None:
    (cwd / "profiles").mkdir()
    (cwd / "profiles" / "mine.toml").write_text('description = "x"\n')
    (cwd / "profiles").chmod(0o700)
    got = as_unprivileged(cwd, {"HOME": str(cwd)}, loads_default_and_misses_cleanly)
    assert got == NOT_FOUND, got


def test_no_home_at_all_means_no_user_directory(cwd: Path) -> None:
    """uid 4242 has no passwd entry: without HOME there is no ~ to search."""
    got = as_unprivileged(cwd, {}, loads_default_and_misses_cleanly)
    assert got == NOT_FOUND, got


def test_readable_directories_are_still_searched(tmp_path: Path, cwd: Path) -> None:
    """The control: the same layout, readable, finds the user's profile."""
    xdg = private_tree(tmp_path / "xdg")
    xdg.chmod(0o755)
    got = as_unprivileged(cwd, {"XDG_CONFIG_HOME": str(xdg)}, loads_default_and_misses_cleanly)
    assert got == "default|found mine", got


def test_an_unreadable_explicit_path_is_a_profile_error(tmp_path: Path, cwd: Path) -> None:
    xdg = private_tree(tmp_path / "xdg")
    target = xdg / "warden" / "profiles" / "mine.toml"

    def load() -> str:
        try:
            load_profile(str(target))
        except ProfileError as e:
            return str(e).splitlines()[0]
        return "loaded"

    got = as_unprivileged(cwd, {}, load)
    assert got == f'{target}: error: cannot read profile file "{target}": Permission denied', got
