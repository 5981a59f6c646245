"""Binds that work as root: idmapped mounts (--ro-bind-owned).

As root the sandbox runs as an unprivileged outer uid, so a root-owned directory
is not its own. On an owned bind the directory's owner is the sandbox's uid:
its owner-only files are readable and git trusts a repository there. Owned
binds are read-only: written to, one would let the sandbox leave setuid
programs of the owner (root) on the host."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from sandbox_util import MODE, TEST_PROFILE, run, with_binds, world_dir

from warden.profiles.model import Bind
from warden.supervisor.sandbox import SpecError
from warden.supervisor.sandbox.mounts import MountError


def _need(program: str) -> str:
    found = shutil.which(program)
    assert found, f"{program} is missing here: scripts/setup installs it"
    return found


def test_sqlite_reads_an_owned_database_and_a_writable_owned_bind_is_refused() -> None:
    d = world_dir()  # owned by whoever runs the tests (root: uid 0), mode 0755
    sqlite = _need("sqlite3")
    db = os.path.join(d, "app.db")
    subprocess.run([sqlite, db, "create table t (x); insert into t values (42);"], check=True)
    os.chmod(db, 0o600)  # the owner's alone
    r = run([sqlite, "-readonly", "/db/app.db", "select x from t;"], owned_ro_binds=[f"{d}:/db"])
    assert (r.status.exit_code, r.out) == (0, "42\n"), r.err
    if MODE == "root":  # without owned, the sandbox's uid may not read it
        r = run([sqlite, "-readonly", "/db/app.db", "select x from t;"], ro_binds=[f"{d}:/db"])
        assert r.status.exit_code != 0
    # Written to, an owned bind would let the sandbox leave a setuid program of
    # the owner (root) on the host: refused before anything starts.
    with pytest.raises(SpecError) as e:
        run(["/bin/true"], profile=with_binds(TEST_PROFILE, Bind(d, "/w", writable=True,
                                                                   owned=True)))
    assert "an owned (idmapped) bind is read-only" in str(e.value)


def test_the_owner_shows_as_the_sandbox_uid_and_other_ids_stay_foreign() -> None:
    d = world_dir()
    with open(os.path.join(d, "mine"), "w") as f:
        f.write("x\n")
    os.chmod(os.path.join(d, "mine"), 0o600)  # owner-only: readable on the owned bind
    os.mkdir(os.path.join(d, "sub"))
    if MODE == "root":
        os.chown(os.path.join(d, "sub"), 4343, 4343)  # another owner stays another
    r = run(["/bin/sh", "-c", "id -u; stat -c %u /w /w/mine /w/sub; cat /w/mine; "
             "touch /w/new 2>/dev/null || echo read-only"], owned_ro_binds=[f"{d}:/w"])
    assert r.status.exit_code == 0, r.err
    me, *owners, other, content, ro = r.out.split()
    assert owners == [me, me] and (content, ro) == ("x", "read-only")
    assert (other != me) == (MODE == "root")


def test_git_trusts_an_owned_read_only_repository() -> None:
    git = _need("git")
    repo = world_dir()
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    subprocess.run([git, "init", "-q", repo], check=True, env=env)
    with open(os.path.join(repo, "f"), "w") as f:
        f.write("tracked\n")
    subprocess.run([git, "-C", repo, "add", "f"], check=True, env=env)
    cmd = [git, "-C", "/repo", "status", "--porcelain"]
    r = run(cmd, owned_ro_binds=[f"{repo}:/repo"])
    assert (r.status.exit_code, r.out) == (0, "A  f\n"), r.err
    if MODE == "root":  # without -owned git refuses the root-owned repository
        r = run(cmd, ro_binds=[f"{repo}:/repo"])
        assert r.status.exit_code != 0 and "dubious ownership" in r.err


def test_an_owned_bind_another_uid_owns_needs_root() -> None:
    d = world_dir()
    if MODE == "root":  # every owner can be mapped: here uid 4242's
        with open(os.path.join(d, "x"), "w") as f:
            f.write("4242's\n")
        os.chown(os.path.join(d, "x"), 4242, 4242)
        os.chmod(os.path.join(d, "x"), 0o600)
        os.chown(d, 4242, 4242)
        r = run(["/bin/cat", "/w/x"], owned_ro_binds=[f"{d}:/w"])
        assert (r.status.exit_code, r.out) == (0, "4242's\n"), r.err
        return
    with pytest.raises(MountError) as e:  # in the parent, before any clone
        run(["/bin/true"], owned_ro_binds=["/usr:/u"])
    assert "an idmapped mount needs root" in str(e.value) and "/usr" in str(e.value)


def test_a_filesystem_without_idmapped_mounts_is_a_clear_error_naming_the_bind() -> None:
    with pytest.raises(MountError) as e:
        run(["/bin/true"], owned_ro_binds=["/sys/kernel:/k"])
    text = str(e.value)
    assert "bind /sys/kernel on /k" in text and "--ro-bind instead" in text
    if MODE == "root":
        assert "cannot make an idmapped mount" in text


def test_a_profile_declares_owned_binds_as_ro_owned() -> None:
    from warden.profiles import load_profile

    d = world_dir()
    with open(os.path.join(d, "x"), "w") as f:
        f.write("owner's\n")
    os.chmod(os.path.join(d, "x"), 0o600)
    prof = os.path.join(world_dir(), "owned.toml")
    with open(prof, "w") as f:
        f.write(f'extends = "default"\n[filesystem]\nro-owned = [{{ source = "{d}", '
                'dest = "/w" }]\n')
    p = load_profile(prof)
    assert [b for b in p.filesystem.binds if b.dest == "/w"] == [Bind(d, "/w", owned=True)]
    r = run(["/bin/cat", "/w/x"], profile=p, bpf=None)
    assert (r.status.exit_code, r.out) == (0, "owner's\n"), r.err
