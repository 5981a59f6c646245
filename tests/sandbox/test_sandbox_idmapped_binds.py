"""Binds that work as root: idmapped mounts (--ro-bind-owned, --bind-owned).

As root the sandbox runs as an unprivileged outer uid, so a root-owned directory
is not its own. On an owned bind the directory's owner is the sandbox's uid:
its owner-only files are readable, git trusts a repository there, and on a
writable one (--bind-owned) what the sandbox creates belongs to the owner
outside. What such a sandbox may not leave behind there (set-id bits, devices,
hard links, file capabilities) is tested in test_sandbox_owned_bind_attacks.py.

As an ordinary user the sandbox's outer ids are the user's own (without
subordinate ids), so the user's own files already map: an owned bind of them
is a plain bind (with the same refusals), and one of another owner's files is
refused before anything starts, since only root can make an idmapped mount."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.sandbox.sandbox_util import (
    MODE,
    PYTHON,
    TEST_PROFILE,
    run,
    supervisor_env,
    with_binds,
    world_dir,
)
from warden.errors import EXIT_SETUP
from warden.profiles.model import Bind
from warden.supervisor.sandbox import SpecError
from warden.supervisor.sandbox.mounts import MountError


def _need(program: str) -> str:
    found = shutil.which(program)
    assert found, f"{program} is missing here: scripts/setup installs it"
    return found


def _owner(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null",
           "PATH": "/usr/bin:/bin"}


def test_sqlite_reads_an_owned_database() -> None:
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


def test_sqlite_writes_a_database_in_a_directory_bound_owned() -> None:
    """The issue's case: as root, a root-owned database bound read-write is read-only in
    practice; bound owned, sqlite writes it, and its journal and the new table belong to
    the directory's owner outside."""
    d = world_dir()
    sqlite = _need("sqlite3")
    db = os.path.join(d, "app.db")
    subprocess.run([sqlite, db, "create table t (x); insert into t values (1);"], check=True)
    write = [sqlite, "/w/app.db", "insert into t values (2); create table u (y); "
             "select count(*) from t;"]
    if MODE == "root":
        r = run(write, binds=[f"{d}:/w"])
        assert r.status.exit_code != 0 and "attempt to write a readonly database" in r.err, r
    r = run(write, owned_binds=[f"{d}:/w"])
    assert (r.status.exit_code, r.out) == (0, "2\n"), r.err
    r = run([sqlite, "/w/new.db", "create table v (z); insert into v values (3);"],
            owned_binds=[f"{d}:/w"])
    assert r.status.exit_code == 0, r.err
    out = subprocess.run([sqlite, db, "select count(*) from t; select count(*) from u;"],
                         check=True, capture_output=True, text=True).stdout
    assert out == "2\n0\n"
    assert _owner(os.path.join(d, "new.db")) == _owner(d) == _owner(db)


def test_git_commits_in_a_repository_bound_owned() -> None:
    git = _need("git")
    repo = world_dir()
    subprocess.run([git, "init", "-q", repo], check=True, env=GIT_ENV)
    with open(os.path.join(repo, "f"), "w") as f:
        f.write("tracked\n")
    cmd = ["/bin/sh", "-c", "cd /repo && git add f && git -c user.name=s -c user.email=s@x "
           "commit -q -m from-the-sandbox && git log --format=%s"]
    env = [f"{k}={v}" for k, v in GIT_ENV.items()]
    if MODE == "root":  # a plain writable bind: git refuses the root-owned repository
        r = run(cmd, binds=[f"{repo}:/repo"], env=env)
        assert r.status.exit_code != 0 and "dubious ownership" in r.err, r
    r = run(cmd, owned_binds=[f"{repo}:/repo"], env=env)
    assert (r.status.exit_code, r.out) == (0, "from-the-sandbox\n"), r.err
    log = subprocess.run([git, "-C", repo, "log", "--format=%s"], check=True,
                         capture_output=True, text=True, env=GIT_ENV).stdout
    assert log == "from-the-sandbox\n"
    # Every object the sandbox wrote belongs to the repository's owner.
    owners = {_owner(os.path.join(top, n)) for top, dirs, files in
              os.walk(os.path.join(repo, ".git")) for n in dirs + files}
    assert owners == {_owner(repo)}


def test_git_trusts_an_owned_read_only_repository() -> None:
    git = _need("git")
    repo = world_dir()
    subprocess.run([git, "init", "-q", repo], check=True, env=GIT_ENV)
    with open(os.path.join(repo, "f"), "w") as f:
        f.write("tracked\n")
    subprocess.run([git, "-C", repo, "add", "f"], check=True, env=GIT_ENV)
    cmd = [git, "-C", "/repo", "status", "--porcelain"]
    r = run(cmd, owned_ro_binds=[f"{repo}:/repo"])
    assert (r.status.exit_code, r.out) == (0, "A  f\n"), r.err
    if MODE == "root":  # without -owned git refuses the root-owned repository
        r = run(cmd, ro_binds=[f"{repo}:/repo"])
        assert r.status.exit_code != 0 and "dubious ownership" in r.err


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


def test_what_the_sandbox_creates_in_a_writable_owned_bind_belongs_to_the_owner() -> None:
    """Files, directories, links and FIFOs the sandbox makes carry the bound directory's
    owner outside, whoever that is (as root: here uid 4343, not the sandbox's outer uid);
    inside they are the sandbox's own."""
    d = world_dir()
    if MODE == "root":
        os.chown(d, 4343, 4343)
    r = run(["/bin/sh", "-c", "cd /w && echo data > f && mkdir dir && echo more > dir/g && "
             "ln -s f link && mkfifo fifo && chmod 0700 dir && stat -c %u:%g f dir link && "
             "id -u"], owned_binds=[f"{d}:/w"])
    assert r.status.exit_code == 0, r.err
    *inside, me = r.out.split()
    assert inside == [f"{me}:{me}"] * 3
    for name in ("f", "dir", "dir/g", "link", "fifo"):
        assert _owner(os.path.join(d, name)) == _owner(d), name
    assert os.stat(os.path.join(d, "dir")).st_mode & 0o7777 == 0o700
    with open(os.path.join(d, "dir", "g")) as f:
        assert f.read() == "more\n"


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
        r = run(["/bin/sh", "-c", "echo new > /w/y"], owned_binds=[f"{d}:/w"])
        assert r.status.exit_code == 0, r.err
        assert _owner(os.path.join(d, "y")) == (4242, 4242)
        return
    for kw, plain in (("owned_ro_binds", "--ro-bind"), ("owned_binds", "--bind")):
        with pytest.raises(MountError) as e:  # in the parent, before any clone
            run(["/bin/true"], **{kw: ["/usr:/u"]})
        text = str(e.value)
        assert text.startswith("bind /usr on /u: an idmapped mount needs root"), text
        assert f"bind it with {plain} instead, or make it yours" in text


def test_a_filesystem_without_idmapped_mounts_is_a_clear_error_naming_the_bind() -> None:
    for kw, plain in (("owned_ro_binds", "--ro-bind"), ("owned_binds", "--bind")):
        with pytest.raises(MountError) as e:
            run(["/bin/true"], **{kw: ["/sys/kernel:/k"]})
        text = str(e.value)
        assert text.startswith("bind /sys/kernel on /k: ") and f"{plain} instead" in text, text
        if MODE == "root":
            assert "cannot make an idmapped mount" in text


def test_the_cli_says_it_in_one_line_and_exits_125() -> None:
    r = subprocess.run([PYTHON, "-m", "warden", "run", "--bind-owned", "/sys/kernel:/k", "--",
                        "/bin/true"], capture_output=True, text=True, env=supervisor_env(),
                       timeout=60)
    assert r.returncode == EXIT_SETUP, r
    (line,) = r.stderr.splitlines()
    assert line.startswith("warden: bind /sys/kernel on /k: ") and "--bind instead" in line, line


def test_a_writable_owned_bind_keeps_nested_user_namespaces_refused() -> None:
    """A nested user namespace would hold CAP_FSETID and CAP_SETFCAP over the owner's
    files (a setuid bit kept on a write, a file capability): refused before anything
    starts, with what to do."""
    d = world_dir()
    with pytest.raises(SpecError) as e:
        run(["/bin/true"], owned_binds=[f"{d}:/w"], userns_limits={"max_user_namespaces": 1})
    assert str(e.value) == (f"writable owned bind {d} on /w: refused with userns_limits "
                            "max_user_namespaces above 0 (a nested user namespace would hold "
                            "capabilities over the owner's files); leave that limit at 0, or "
                            "bind it with --bind")
    # Read-only, or not owned, the limit may be raised.
    for kw in ("owned_ro_binds", "binds"):
        r = run(["/bin/true"], **{kw: [f"{d}:/w"]}, userns_limits={"max_user_namespaces": 1})
        assert r.status.exit_code == 0, r.err


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


def test_a_profile_object_carries_a_writable_owned_bind() -> None:
    d = world_dir()
    prof = with_binds(TEST_PROFILE, Bind(d, "/w", writable=True, owned=True))
    r = run(["/bin/sh", "-c", "echo hi > /w/made"], profile=prof)
    assert r.status.exit_code == 0, r.err
    assert _owner(os.path.join(d, "made")) == _owner(d)


def test_a_profile_declares_writable_owned_binds_as_rw_owned() -> None:
    """`rw-owned` in a profile file is `--bind-owned`: writable, the owner's inside, what
    the sandbox makes belongs to the owner outside, and the guard still refuses set-id
    modes on it (the file stays without its setuid bit)."""
    from warden.profiles import load_profile

    d = world_dir()
    prof = os.path.join(world_dir(), "rw-owned.toml")
    with open(prof, "w") as f:
        f.write(f'extends = "default"\n[filesystem]\nrw-owned = [{{ source = "{d}", '
                'dest = "/w" }]\n')
    p = load_profile(prof)
    assert [b for b in p.filesystem.binds if b.dest == "/w"] == [
        Bind(d, "/w", writable=True, owned=True)]
    r = run(["/bin/sh", "-c", "echo hi > /w/made; chmod 4755 /w/made; echo rc=$?"],
            profile=p, bpf=None)
    assert r.status.exit_code == 0, r.err
    assert r.out.strip().endswith("rc=1"), r.out  # chmod refused (EPERM)
    made = os.path.join(d, "made")
    assert _owner(made) == _owner(d)
    assert not os.stat(made).st_mode & 0o6000
