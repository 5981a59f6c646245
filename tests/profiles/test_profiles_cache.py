"""The cache of compiled filters: a hit skips the compiler, and nothing in the cache
directory can make it return a filter other than the one compiling would give.

Entries carry a keyed MAC; the key lives in its own private directory. Every
forgery below is written as a sandbox with a writable bind of the cache
could write it (plain digests as the old format had, MACs under guessed keys),
and each must be refused loudly and replaced. The controls prove the tests
can fail: an entry MACed with the real key is what the cache returns.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from pathlib import Path

import pytest

import warden.profiles.compiler
from tests.profiles.unpriv_util import as_unprivileged
from warden.profiles import cache, load_profile
from warden.profiles.cache import CacheWarning, cached_compile, policy_key
from warden.profiles.compiler import compile_policy
from warden.profiles.model import SeccompPolicy

ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW


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


@pytest.fixture()
def keyf(tmp_path: Path) -> Path:
    return tmp_path / "state" / "warden" / cache.KEY_NAME


def cc(policy: SeccompPolicy, where: Path, keyf: Path, **kw: object) -> bytes:
    return cached_compile(policy, kill_as_notify=True, directory=where, key_file=keyf,
                          **kw)  # type: ignore[arg-type]


def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, compiling fails: a result can only have come from the cache."""
    def refuse(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("compiled although the cache should have answered")

    monkeypatch.setattr(warden.profiles.compiler, "compile_policy", refuse)


def key(policy: SeccompPolicy, kill_as_notify: bool = True) -> str:
    k = policy_key(policy, kill_as_notify)
    assert k is not None
    return k


def entry(where: Path, policy: SeccompPolicy) -> Path:
    return where / key(policy)


def plant(where: Path, policy: SeccompPolicy, keyf: Path, code: bytes = ALLOW_ALL) -> Path:
    """An entry exactly as warden would write it with the real key (the control)."""
    cache.store(where, key(policy), code, keyf.read_bytes())
    return entry(where, policy)


def quiet() -> warnings.catch_warnings[list[warnings.WarningMessage]]:
    return warnings.catch_warnings(record=True)


def test_a_miss_compiles_and_stores_privately(where: Path, keyf: Path, policy: SeccompPolicy,
                                              truth: bytes) -> None:
    with quiet() as seen:
        warnings.simplefilter("always")
        assert cc(policy, where, keyf) == truth
    assert seen == []
    f = entry(where, policy)
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert f.stat().st_uid == os.geteuid()
    assert f.read_bytes().endswith(truth)
    assert [p.name for p in where.iterdir()] == [f.name]  # no temporary file left behind
    # The key: 32 random bytes, 0600, in a 0700 directory that is not the cache's.
    assert len(keyf.read_bytes()) == cache.KEY_BYTES
    assert stat.S_IMODE(keyf.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyf.parent.stat().st_mode) == 0o700
    assert not cache.overlaps(str(keyf.parent), where)


def test_a_hit_does_not_compile(where: Path, keyf: Path, policy: SeccompPolicy, truth: bytes,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    cc(policy, where, keyf)
    no_compiler(monkeypatch)
    assert cc(policy, where, keyf) == truth


def test_control_an_entry_with_the_real_key_is_used(where: Path, keyf: Path,
                                                    policy: SeccompPolicy) -> None:
    """What makes the forgery tests meaningful: the key is all that stands in the way."""
    cc(policy, where, keyf)
    plant(where, policy, keyf)
    assert cc(policy, where, keyf) == ALLOW_ALL


def test_the_key_covers_what_decides_the_filter(policy: SeccompPolicy) -> None:
    assert policy_key(policy, True) != policy_key(policy, False)
    fewer = SeccompPolicy(policy.default_action, policy.rules[:-1], policy.bad_arch_action)
    assert policy_key(fewer, True) != policy_key(policy, True)
    # Where a rule was written does not change the filter, so not the key either.
    moved = SeccompPolicy(policy.default_action,
                          tuple(type(r)(r.syscall, r.action, r.conditions) for r in policy.rules),
                          policy.bad_arch_action)
    assert policy_key(moved, True) == policy_key(policy, True)


def _forge(name: str, how: str) -> bytes:
    """An allow-all entry as an attacker without the key would write it."""
    from _blake2 import blake2b

    if how == "old unkeyed digest":
        digest = blake2b(name.encode() + b"\n" + ALLOW_ALL, digest_size=32).hexdigest()
        return b"warden-bpf-cache 2\n" + name.encode() + b"\n" + digest.encode() + b"\n\n" \
            + ALLOW_ALL
    if how == "unkeyed digest, new header":
        digest = blake2b(cache.MAGIC + name.encode() + b"\n" + ALLOW_ALL,
                         digest_size=32).hexdigest()
    else:  # a MAC under a guessed key: all zeros, the entry's name, the empty key
        guess = {"zero key": bytes(32), "name as key": bytes.fromhex(name), "empty key": b""}[how]
        h = blake2b(key=guess, digest_size=32, person=b"warden-bpf")
        h.update(cache.MAGIC + name.encode() + b"\n" + ALLOW_ALL)
        digest = h.hexdigest()
    return cache.MAGIC + name.encode() + b"\n" + digest.encode() + b"\n\n" + ALLOW_ALL


@pytest.mark.parametrize("how", ["old unkeyed digest", "unkeyed digest, new header", "zero key",
                                 "name as key", "empty key"])
def test_a_forged_allow_all_entry_is_refused_loudly_and_replaced(
        where: Path, keyf: Path, policy: SeccompPolicy, truth: bytes, how: str) -> None:
    cc(policy, where, keyf)
    f = entry(where, policy)
    f.write_bytes(_forge(f.name, how))
    with pytest.warns(CacheWarning, match=f"{f}.*failed authentication"):
        assert cc(policy, where, keyf) == truth
    assert f.read_bytes().endswith(truth)  # and the entry was rewritten
    with quiet() as seen:
        warnings.simplefilter("always")
        assert cc(policy, where, keyf) == truth
    assert seen == []  # the replacement is a good entry again


@pytest.mark.parametrize("damage", ["flip a filter byte", "flip a MAC byte", "truncate",
                                    "append an instruction", "empty", "other key's file"])
def test_a_damaged_entry_is_recompiled(where: Path, keyf: Path, policy: SeccompPolicy,
                                       truth: bytes, damage: str) -> None:
    cc(policy, where, keyf)
    f = entry(where, policy)
    data = bytearray(f.read_bytes())
    if damage == "flip a filter byte":
        data[-5] ^= 0x01  # the k of the last instruction (a return value)
    elif damage == "flip a MAC byte":
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
        cached_compile(policy, kill_as_notify=False, directory=where, key_file=keyf)
        data = bytearray((where / other).read_bytes())
    f.write_bytes(bytes(data))
    f.chmod(0o600)
    with pytest.warns(CacheWarning, match=str(f)):
        assert cc(policy, where, keyf) == truth
    assert f.read_bytes().endswith(truth)


@pytest.mark.parametrize("problem", ["file group-readable", "file is a symlink",
                                     "file has a second link", "dir group-readable",
                                     "dir is a symlink", "dir owned by another user",
                                     "file owned by another user"])
def test_an_entry_that_is_not_private_is_ignored(where: Path, keyf: Path, policy: SeccompPolicy,
                                                 truth: bytes, problem: str) -> None:
    cc(policy, where, keyf)
    f = plant(where, policy, keyf)  # would be used if the check were missing
    if problem == "file group-readable":
        f.chmod(0o640)
    elif problem == "file is a symlink":
        real = where.parent / "elsewhere"
        f.rename(real)
        f.symlink_to(real)
    elif problem == "file has a second link":
        os.link(f, where.parent / "second")
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
    with pytest.warns(CacheWarning):
        assert cache.load(where, key(policy), keyf.read_bytes()) is None
    with pytest.warns(CacheWarning):
        assert cc(policy, where, keyf) == truth


def test_a_foreign_directory_is_never_written(where: Path, keyf: Path, policy: SeccompPolicy,
                                              truth: bytes) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    where.mkdir(parents=True, mode=0o700)
    os.chown(where, 4242, 4242)
    with pytest.warns(CacheWarning, match="not a private directory"):
        assert cc(policy, where, keyf) == truth
    assert list(where.iterdir()) == []


@pytest.mark.parametrize("problem", ["key group-readable", "key is a symlink", "key too short",
                                     "key has a second link", "key dir group-writable",
                                     "key owned by another user", "key dir owned by another user"])
def test_a_key_that_is_not_ours_and_private_means_no_cache(
        where: Path, keyf: Path, policy: SeccompPolicy, truth: bytes, problem: str) -> None:
    cc(policy, where, keyf)
    plant(where, policy, keyf)  # valid under the key: proves the key is not read below
    if problem == "key group-readable":
        keyf.chmod(0o640)
    elif problem == "key is a symlink":
        real = keyf.parent.parent / "planted.key"
        keyf.rename(real)
        keyf.symlink_to(real)
    elif problem == "key too short":
        keyf.write_bytes(keyf.read_bytes()[:16])
    elif problem == "key has a second link":
        os.link(keyf, keyf.parent.parent / "second")
    elif problem == "key dir group-writable":
        keyf.parent.chmod(0o770)
    elif os.geteuid() != 0:
        pytest.skip("needs root to chown")
    elif problem == "key owned by another user":
        os.chown(keyf, 4242, 4242)
    else:
        os.chown(keyf.parent, 4242, 4242)
    before = entry(where, policy).read_bytes()
    with pytest.warns(CacheWarning, match=str(keyf.parent)):
        assert cc(policy, where, keyf) == truth
    assert entry(where, policy).read_bytes() == before  # neither used nor rewritten


def test_a_new_key_drops_the_entries_the_old_one_signed(where: Path, keyf: Path,
                                                        policy: SeccompPolicy,
                                                        truth: bytes) -> None:
    cc(policy, where, keyf)
    keyf.unlink()
    with quiet() as seen:
        warnings.simplefilter("always")
        assert cc(policy, where, keyf) == truth  # recompiled, and quietly
    assert seen == [] and len(keyf.read_bytes()) == cache.KEY_BYTES
    assert cache.load(where, key(policy), keyf.read_bytes()) == truth


# ---- what the sandbox can reach -------------------------------------------------------

def reach_cases(tmp_path: Path, where: Path) -> dict[str, str]:
    alias = tmp_path / "alias"
    alias.symlink_to(where.parent)
    return {"the cache dir": str(where), "its parent": str(where.parent),
            "a symlink to its parent": str(alias), "an entry in it": str(where / "x")}


@pytest.mark.parametrize("case", ["the cache dir", "its parent", "a symlink to its parent",
                                  "an entry in it"])
def test_a_writable_reach_of_the_cache_turns_it_off(tmp_path: Path, where: Path, keyf: Path,
                                                    policy: SeccompPolicy, truth: bytes,
                                                    case: str) -> None:
    cc(policy, where, keyf)
    f = plant(where, policy, keyf)  # changes the answer if the cache were read
    before = f.read_bytes()
    path = reach_cases(tmp_path, where)[case]
    assert cc(policy, where, keyf, reachable=[(path, True)]) == truth
    assert f.read_bytes() == before  # not rewritten either
    # Read-only, the same binds leave the cache on: the control.
    assert cc(policy, where, keyf, reachable=[(path, False)]) == ALLOW_ALL


def test_a_writable_bind_elsewhere_keeps_the_cache(tmp_path: Path, where: Path, keyf: Path,
                                                   policy: SeccompPolicy) -> None:
    cc(policy, where, keyf)
    plant(where, policy, keyf)
    (tmp_path / "work").mkdir()
    assert cc(policy, where, keyf, reachable=[(str(tmp_path / "work"), True),
                                              ("/usr", False)]) == ALLOW_ALL


@pytest.mark.parametrize("writable", [False, True])
@pytest.mark.parametrize("case", ["the key dir", "the key file", "the home above it", "/"])
def test_a_sandbox_that_could_see_the_key_never_gets_it(tmp_path: Path, where: Path,
                                                        keyf: Path, policy: SeccompPolicy,
                                                        truth: bytes, case: str,
                                                        writable: bool) -> None:
    cc(policy, where, keyf)
    plant(where, policy, keyf)
    old = keyf.read_bytes()
    path = {"the key dir": str(keyf.parent), "the key file": str(keyf),
            "the home above it": str(tmp_path), "/": "/"}[case]
    if os.geteuid() == 0:
        # Root's sandboxes run as another uid: the 0600 key is out of their reach.
        assert cc(policy, where, keyf, reachable=[(path, writable)]) == truth
        assert keyf.read_bytes() == old
        return
    with pytest.warns(CacheWarning, match=f"{path}.*key was discarded"):
        assert cc(policy, where, keyf, reachable=[(path, writable)]) == truth
    assert not keyf.exists()
    # While this supervisor (whose sandbox may still run) lives, no new key is made.
    assert cc(policy, where, keyf) == truth
    assert not keyf.exists()
    # Once it is gone (here: its record names a process that has exited), a new key.
    (keyf.parent / cache.EXPOSED_NAME).write_text("999999999 0\n")
    assert cc(policy, where, keyf) == truth
    assert len(keyf.read_bytes()) == cache.KEY_BYTES and keyf.read_bytes() != old
    assert cc(policy, where, keyf) == truth  # the planted entry was dropped with the old key


def test_file_grants_count_as_reach(where: Path, keyf: Path, policy: SeccompPolicy,
                                    truth: bytes) -> None:
    cc(policy, where, keyf)
    f = plant(where, policy, keyf)
    assert cc(policy, where, keyf, reachable=[(str(f), True)]) == truth  # --file ENTRY:w
    assert cc(policy, where, keyf, reachable=[(str(f), False)]) == ALLOW_ALL


def test_an_unwritable_cache_falls_back_silently(policy: SeccompPolicy, truth: bytes) -> None:
    """uid 4242 with HOME=/root (seen in practice): the cache cannot be made; compile anyway."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid")

    def run() -> str:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = cached_compile(policy, kill_as_notify=True)
        if seen:
            return f"warned: {seen[0].message}"
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
        got = as_unprivileged(cwd, {"XDG_CACHE_HOME": str(cwd), "XDG_STATE_HOME": "/root",
                                    "HOME": "/nonexistent"}, run)
        assert got == "same", got
        assert not (cwd / ".cache").exists()
    finally:
        import shutil

        shutil.rmtree(cwd)


def test_an_unidentifiable_toolchain_means_no_cache(
        where: Path, keyf: Path, policy: SeccompPolicy, truth: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If the compiler's sources or libseccomp cannot be identified, nothing is keyed on them."""
    monkeypatch.setattr(cache, "_toolchain", lambda: None)
    assert policy_key(policy, True) is None
    assert cc(policy, where, keyf) == truth
    assert not where.exists()


def test_the_cache_can_be_turned_off(where: Path, keyf: Path, policy: SeccompPolicy,
                                     truth: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.DISABLE_VAR, "1")
    assert cc(policy, where, keyf) == truth
    assert not where.exists() and not keyf.parent.exists()


def test_the_default_locations_follow_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    monkeypatch.setenv("XDG_STATE_HOME", "/x/state")
    assert cache.cache_dir() == Path("/x/cache/warden/seccomp")
    assert cache.key_path() == Path("/x/state/warden/cache.key")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert cache.cache_dir() == Path("/home/u/.cache/warden/seccomp")
    assert cache.key_path() == Path("/home/u/.local/state/warden/cache.key")
    monkeypatch.delenv("HOME")
    assert cache.cache_dir() is None and cache.key_path() is None


def test_a_bind_of_the_cache_inside_the_key_directory_keeps_the_key(
        tmp_path: Path, policy: SeccompPolicy, truth: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """XDG_CACHE_HOME = XDG_STATE_HOME: the cache dir lies inside the key's directory;
    binding it shows entries, not the key, so only the cache is off."""
    monkeypatch.delenv(cache.DISABLE_VAR, raising=False)
    where, keyf = tmp_path / "warden" / "seccomp", tmp_path / "warden" / cache.KEY_NAME
    cc(policy, where, keyf)
    plant(where, policy, keyf)
    old = keyf.read_bytes()
    with quiet() as seen:
        warnings.simplefilter("always")
        assert cc(policy, where, keyf, reachable=[(str(where), True)]) == truth
    assert seen == [] and keyf.read_bytes() == old


def test_a_bind_mount_alias_of_the_cache_is_recognised(tmp_path: Path, where: Path, keyf: Path,
                                                       policy: SeccompPolicy,
                                                       truth: bytes) -> None:
    """Another name for the same directory (a bind mount, not a symlink) by device/inode."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a bind mount")
    import subprocess

    cc(policy, where, keyf)
    plant(where, policy, keyf)
    alias = tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(where.parent), str(alias)], check=True)
    try:
        assert cc(policy, where, keyf, reachable=[(str(alias), True)]) == truth
        assert cc(policy, where, keyf, reachable=[(str(alias / where.name), True)]) == truth
        assert cc(policy, where, keyf, reachable=[(str(alias), False)]) == ALLOW_ALL
    finally:
        subprocess.run(["umount", str(alias)], check=True)
