"""The cache of compiled filters: a hit skips the compiler, and nothing in the cache
directory can make it return a filter other than the one compiling would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from unpriv_util import as_unprivileged

import profiles.compiler
from profiles import cache, load_profile
from profiles.cache import cached_compile, policy_key
from profiles.compiler import compile_policy
from profiles.model import SeccompPolicy


@pytest.fixture(scope="module")
def policy() -> SeccompPolicy:
    return load_profile("default").seccomp


@pytest.fixture(scope="module")
def truth(policy: SeccompPolicy) -> bytes:
    return compile_policy(policy, kill_as_notify=True)


@pytest.fixture()
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(cache.DISABLE_VAR, raising=False)
    return tmp_path / "cache" / "warden"


def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, compiling fails: a result can only have come from the cache."""
    def refuse(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("compiled although the cache should have answered")

    monkeypatch.setattr(profiles.compiler, "compile_policy", refuse)


def key(policy: SeccompPolicy, kill_as_notify: bool = True) -> str:
    k = policy_key(policy, kill_as_notify)
    assert k is not None
    return k


def entry(where: Path, policy: SeccompPolicy) -> Path:
    return where / key(policy)


def test_a_miss_compiles_and_stores_privately(where: Path, policy: SeccompPolicy,
                                              truth: bytes) -> None:
    assert cached_compile(policy, kill_as_notify=True, directory=where) == truth
    f = entry(where, policy)
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert f.stat().st_uid == os.geteuid()
    assert f.read_bytes().endswith(truth)
    assert [p.name for p in where.iterdir()] == [f.name]  # no temporary file left behind


def test_a_hit_does_not_compile(where: Path, policy: SeccompPolicy, truth: bytes,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    cached_compile(policy, kill_as_notify=True, directory=where)
    no_compiler(monkeypatch)
    assert cached_compile(policy, kill_as_notify=True, directory=where) == truth


def test_the_key_covers_what_decides_the_filter(policy: SeccompPolicy) -> None:
    assert policy_key(policy, True) != policy_key(policy, False)
    fewer = SeccompPolicy(policy.default_action, policy.rules[:-1], policy.bad_arch_action)
    assert policy_key(fewer, True) != policy_key(policy, True)
    # Where a rule was written does not change the filter, so not the key either.
    moved = SeccompPolicy(policy.default_action,
                          tuple(type(r)(r.syscall, r.action, r.conditions) for r in policy.rules),
                          policy.bad_arch_action)
    assert policy_key(moved, True) == policy_key(policy, True)


@pytest.mark.parametrize("damage", ["flip a filter byte", "flip a digest byte", "truncate",
                                    "append an instruction", "empty", "other key's file"])
def test_a_damaged_entry_is_recompiled(where: Path, policy: SeccompPolicy, truth: bytes,
                                       damage: str) -> None:
    cached_compile(policy, kill_as_notify=True, directory=where)
    f = entry(where, policy)
    data = bytearray(f.read_bytes())
    if damage == "flip a filter byte":
        data[-5] ^= 0x01  # the k of the last instruction (a return value)
    elif damage == "flip a digest byte":
        head = data.index(b"\n\n")
        data[head - 1] ^= 0x01
    elif damage == "truncate":
        del data[-8:]
    elif damage == "append an instruction":
        data += data[-8:]
    elif damage == "empty":
        data = bytearray()
    else:
        # A valid entry, but for another policy (kill_as_notify off): renamed into place.
        other = key(policy, False)
        cached_compile(policy, kill_as_notify=False, directory=where)
        data = bytearray((where / other).read_bytes())
    f.write_bytes(bytes(data))
    f.chmod(0o600)
    assert cached_compile(policy, kill_as_notify=True, directory=where) == truth
    assert f.read_bytes().endswith(truth)  # and the entry was rewritten


@pytest.mark.parametrize("problem", ["file group-readable", "file is a symlink",
                                     "dir group-readable", "dir is a symlink",
                                     "dir owned by another user", "file owned by another user"])
def test_an_entry_that_is_not_private_is_ignored(where: Path, policy: SeccompPolicy,
                                                 truth: bytes, problem: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cached_compile(policy, kill_as_notify=True, directory=where)
    f = entry(where, policy)
    if problem == "file group-readable":
        f.chmod(0o640)
    elif problem == "file is a symlink":
        real = where.parent / "elsewhere"
        f.rename(real)
        f.symlink_to(real)
    elif problem == "dir group-readable":
        where.chmod(0o750)
    elif problem == "dir is a symlink":
        real = where.parent / "real-dir"
        where.rename(real)
        where.symlink_to(real)
    elif os.geteuid() != 0:
        pytest.skip("needs root to chown")
    elif problem == "dir owned by another user":
        os.chown(where, 4242, 4242)
    else:
        os.chown(f, 4242, 4242)
    assert cache.load(where, key(policy)) is None
    assert cached_compile(policy, kill_as_notify=True, directory=where) == truth


def test_a_foreign_directory_is_never_written(where: Path, policy: SeccompPolicy,
                                              truth: bytes) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    where.mkdir(parents=True, mode=0o700)
    os.chown(where, 4242, 4242)
    assert cached_compile(policy, kill_as_notify=True, directory=where) == truth
    assert list(where.iterdir()) == []


def test_an_unwritable_cache_falls_back_silently(policy: SeccompPolicy, truth: bytes) -> None:
    """uid 4242 with HOME=/root (seen in practice): the cache cannot be made; compile anyway."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid")

    def run() -> str:
        got = cached_compile(policy, kill_as_notify=True)
        return "same" if got == truth else "DIFFERENT"

    import tempfile

    cwd = Path(tempfile.mkdtemp(prefix="warden-cache-"))
    try:
        cwd.chmod(0o755)
        got = as_unprivileged(cwd, {"HOME": "/root"}, run)
        assert got == "same", got
        got = as_unprivileged(cwd, {"XDG_CACHE_HOME": "/root/.cache", "HOME": "/nonexistent"},
                              run)
        assert got == "same", got
        assert not (cwd / ".cache").exists()
    finally:
        cwd.rmdir()


def test_an_unidentifiable_toolchain_means_no_cache(
        where: Path, policy: SeccompPolicy, truth: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the compiler's sources or libseccomp cannot be identified, nothing is keyed on them."""
    monkeypatch.setattr(cache, "_toolchain", lambda: None)
    assert policy_key(policy, True) is None
    assert cached_compile(policy, kill_as_notify=True, directory=where) == truth
    assert not where.exists()


def test_the_cache_can_be_turned_off(where: Path, policy: SeccompPolicy, truth: bytes,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.DISABLE_VAR, "1")
    assert cached_compile(policy, kill_as_notify=True, directory=where) == truth
    assert not where.exists()


def test_the_default_location_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert cache.cache_dir() == Path("/x/cache/warden/seccomp")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert cache.cache_dir() == Path("/home/u/.cache/warden/seccomp")
    monkeypatch.delenv("HOME")
    assert cache.cache_dir() is None
