"""A filesystem that ordinary programs expect: /dev/shm, files reopened by path,
inline data, symlinks, directories and a tmpfs wherever asked. Real kernel, real programs."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import textwrap

import pytest
from sandbox_util import PY, PYTHON, py, run, supervisor_env, world_dir

from warden.profiles import load_profile
from warden.supervisor.sandbox import SetupError, SpecError, build_spec


def warden(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", *args], capture_output=True, text=True,
                          env=supervisor_env(), timeout=timeout)


# ---------------------------------------------------------------- /dev/shm

def test_multiprocessing_semaphores_work_in_dev_shm() -> None:
    r = py("import multiprocessing, os, json\n"
           "lock = multiprocessing.Lock(); sem = multiprocessing.Semaphore(2)\n"
           "with lock: sem.acquire(); sem.release()\n"
           "st = os.statvfs('/dev/shm')\n"
           "open('/dev/shm/x', 'w').write('y')\n"
           "print(json.dumps([st.f_blocks * st.f_frsize, oct(os.stat('/dev/shm').st_mode)]))")
    assert r.status.exit_code == 0, r.err
    size, mode = r.json()
    assert size == 64 << 20 and mode == "0o41777"


def test_dev_shm_is_private_and_sized_by_a_tmpfs_entry() -> None:
    d = world_dir()
    marker = f"/dev/shm/warden-host-{os.getpid()}"
    with open(marker, "w") as f:
        f.write("host")
    try:
        r = py("import os, json; st = os.statvfs('/dev/shm')\n"
               "print(json.dumps([sorted(os.listdir('/dev/shm')), st.f_blocks * st.f_frsize]))",
               tmpfs=["/dev/shm"])
        assert r.status.exit_code == 0, r.err
        assert r.json() == [[], 64 << 20]
    finally:
        os.unlink(marker)
    prof = os.path.join(d, "shm.toml")
    with open(prof, "w") as f:
        f.write(textwrap.dedent("""\
            extends = "default"
            [filesystem]
            tmpfs = [{ dest = "/dev/shm", size = "8M" }]
            """))
    chk = warden("profile", "check", prof)
    assert chk.returncode == 0, chk.stderr
    run = warden("run", "--profile", prof, "--", "/bin/sh", "-c",
                 "df -k /dev/shm | tail -1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[1] == "8192"
    run = warden("run", "--tmpfs", "/dev/shm", "--", "/bin/true")
    assert run.returncode == 0, run.stderr


def test_check_refuses_what_run_refuses_under_proc_and_dev() -> None:
    d = world_dir()
    for entry in ('ro = [{ source = "/usr", dest = "/dev/x" }]', 'tmpfs = ["/proc/y"]',
                  'rw = ["/dev/shm"]'):
        prof = os.path.join(d, "bad.toml")
        with open(prof, "w") as f:
            f.write(f'extends = "default"\n[filesystem]\n{entry}\n')
        chk = warden("profile", "check", prof)
        assert chk.returncode == 1 and "is reserved" in chk.stderr, (entry, chk.stderr)
    for kw in ({"tmpfs": ["/dev/pts"]}, {"ro_binds": ["/usr:/dev/shm"]}):
        try:
            build_spec(["/bin/true"], load_profile("default"), **kw)  # type: ignore[arg-type]
        except SpecError as e:
            assert "is reserved" in str(e)
        else:
            raise AssertionError(kw)


# ---------------------------------------------------------------- files reopened by path

def _host_file(name: str, data: bytes) -> str:
    path = os.path.join(world_dir(), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _need(program: str) -> str:
    found = shutil.which(program)
    assert found, f"{program} is missing here: scripts/setup installs it"
    return found


def test_programs_reopen_a_read_grant_by_path() -> None:
    doc = _host_file("doc.json", b'{"b": 1, "a": [2, 3]}')
    r = run([PY, "-I", "-m", "json.tool", "--sort-keys", "/dev/fd/4"], files=[doc])
    assert r.status.exit_code == 0, r.err
    assert json.loads(r.out) == {"a": [2, 3], "b": 1}
    lines = _host_file("lines.txt", b"pear\napple\nfig\n")
    r = run([_need("sort"), "/dev/fd/4"], files=[lines])
    assert (r.status.exit_code, r.out) == (0, "apple\nfig\npear\n"), r.err
    r = run(["/bin/cat", "/proc/self/fd/4"], files=[lines])
    assert (r.status.exit_code, r.out) == (0, "pear\napple\nfig\n"), r.err
    # sqlite3 reads a script by path. (A database opened at /dev/fd/N it resolves
    # through the link to the host's path, which the sandbox does not have.)
    script = _host_file("q.sql", b"select 'from the host';\n")
    r = run([_need("sqlite3"), ":memory:", ".read /dev/fd/4"], files=[script])
    assert (r.status.exit_code, r.out) == (0, "from the host\n"), r.err


def test_stdin_that_is_a_regular_file_reopens_as_dev_stdin() -> None:
    path = _host_file("in.txt", b"via stdin\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        r = run(["/bin/cat", "/dev/stdin"], stdin=fd)
    finally:
        os.close(fd)
    assert (r.status.exit_code, r.out) == (0, "via stdin\n"), r.err


def test_tar_writes_its_archive_to_a_write_grant_by_path() -> None:
    # Reopening by path checks the file's own permissions too: as root the
    # sandbox's outer uid is not its owner, so the file is made writable to it.
    out = _host_file("out.tgz", b"old contents")
    os.chmod(out, 0o666)
    r = run([_need("tar"), "czf", "/dev/fd/4", "-C", "/etc", "passwd"], files=[out + ":w"])
    assert r.status.exit_code == 0, r.err
    with open(out, "rb") as f, tarfile.open(fileobj=io.BytesIO(gzip.decompress(f.read()))) as t:
        assert t.getnames() == ["passwd"]


def test_a_grant_reaches_that_one_file_and_no_sibling() -> None:
    d = world_dir()
    granted = os.path.join(d, "granted")
    for name in ("granted", "sibling"):
        with open(os.path.join(d, name), "w") as f:
            f.write(name)
        os.chmod(os.path.join(d, name), 0o666)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # the host directory itself, by fd
    try:
        r = py("import os, json\n"
               "def t(f):\n"
               "    try: return f()\n"
               "    except OSError as e: return e.errno\n"
               "g = '/dev/fd/' + os.environ['WARDEN_FILES'].split(':')[0]\n"
               "print(json.dumps([open(g).read(), t(lambda: open(g, 'w').close()),\n"
               "  t(lambda: os.read(os.open('sibling', os.O_RDONLY, dir_fd=DFD), 9).decode()),\n"
               "  t(lambda: os.open('new', os.O_CREAT | os.O_WRONLY, dir_fd=DFD))]))"
               .replace("DFD", str(dfd)),
               files=[granted], pass_fds=[dfd])
    finally:
        os.close(dfd)
    assert r.status.exit_code == 0, r.err
    # Read as granted; not writable (a read grant); nothing else in its directory,
    # even through an fd of that directory (whose own listing the fd itself grants).
    assert r.json() == ["granted", 13, 13, 13]
    assert not os.path.exists(os.path.join(d, "new"))


def test_an_append_grant_is_not_reopened_for_overwriting() -> None:
    log = _host_file("log", b"kept\n")
    os.chmod(log, 0o666)
    r = run(["/bin/sh", "-c", "echo more >&4; echo lost > /dev/fd/4; echo $?"],
            files=[log + ":a"])
    assert r.status.exit_code == 0, r.err
    with open(log) as f:
        assert f.read() == "kept\nmore\n"


# ---------------------------------------------------------------- placed in the sandbox

def test_data_symlink_dir_and_tmpfs_anywhere() -> None:
    r_fd, w_fd = os.pipe()
    os.write(w_fd, b"inline config\n")
    os.close(w_fd)
    try:
        r = py("import os, json\n"
               "def t(f):\n"
               "    try: return f()\n"
               "    except OSError as e: return e.errno\n"
               "print(json.dumps([open('/etc/app/conf').read(),\n"
               "  oct(os.stat('/etc/app/conf').st_mode),\n"
               "  t(lambda: open('/etc/app/conf', 'w')) ,\n"
               "  os.readlink('/opt/py'), os.path.realpath('/opt/py'),\n"
               "  os.path.isdir('/srv/empty'), os.listdir('/srv/empty'),\n"
               "  t(lambda: open('/var/cache/x', 'w').write('ok'))]))",
               ro_bind_data=[f"{r_fd}:/etc/app/conf"], symlinks=["/usr/bin:/opt/py"],
               dirs=["/srv/empty"], tmpfs=["/var/cache"])
    finally:
        os.close(r_fd)
    assert r.status.exit_code == 0, r.err
    assert r.json() == ["inline config\n", "0o100444", 30, "/usr/bin", "/usr/bin", True, [], 2]


def test_placed_entries_are_run_options_and_checked() -> None:
    d = world_dir()
    data = _host_file("d", b"from fd 5\n")
    fd = os.open(data, os.O_RDONLY)
    try:
        r = subprocess.run([PYTHON, "-m", "warden", "run", "--ro-bind-data", f"{fd}:/etc/x",
                            "--symlink", "x:/etc/y", "--dir", "/a/b", "--", "/bin/sh", "-c",
                            "cat /etc/y; test -d /a/b && echo dir"],
                           capture_output=True, text=True, env=supervisor_env(), timeout=60,
                           pass_fds=(fd,))
    finally:
        os.close(fd)
    assert (r.returncode, r.stdout) == (0, "from fd 5\ndir\n"), r.stderr
    assert d
    prof = load_profile("default")
    for kw, msg in (({"ro_bind_data": ["x:/etc/x"]}, "expected FD:DEST"),
                    ({"ro_bind_data": ["999:/etc/x"]}, "fd 999: Bad file descriptor"),
                    ({"symlinks": ["/a:/dev/z"]}, "/dev/z is reserved"),
                    ({"dirs": ["/tmp"]}, "already used by the built-in /tmp"),
                    ({"dirs": ["/x", "/x"]}, "already used by --dir /x")):
        try:
            build_spec(["/bin/true"], prof, **kw)  # type: ignore[arg-type]
        except SpecError as e:
            assert msg in str(e), (kw, str(e))
        else:
            raise AssertionError(kw)


def test_placed_entries_never_follow_a_link_planted_in_a_writable_bind() -> None:
    # An earlier sandbox left links in a writable bind, pointing at a host
    # directory (as the child sees the host while it builds the root: /oldroot).
    w = world_dir()
    outside = world_dir()
    for name in ("abs", "rel"):
        target = "/oldroot" + outside if name == "abs" else "../../../../../oldroot" + outside
        os.symlink(target, os.path.join(w, name))
    r_fd, w_fd = os.pipe()
    os.close(w_fd)
    try:
        for kw in ({"dirs": ["/w/abs/made"]}, {"dirs": ["/w/rel"]},
                   {"symlinks": ["/x:/w/abs/link"]}, {"symlinks": ["/x:/w/rel"]},
                   {"ro_bind_data": [f"{r_fd}:/w/abs/data"]}, {"ro_bind_data": [f"{r_fd}:/w/rel"]},
                   {"tmpfs": ["/w/abs/t"]}):
            with pytest.raises(SetupError) as e:
                run(["/bin/true"], binds=[f"{w}:/w"], **kw)  # type: ignore[arg-type]
            # Refused: a link on the way, or (a link at a --symlink's dest) already there.
            assert ("is a symbolic link, which warden does not follow" in str(e.value)
                    or (kw.get("symlinks") == ["/x:/w/rel"] and "File exists" in str(e.value))), \
                (kw, str(e.value))
            assert os.listdir(outside) == [], kw
    finally:
        os.close(r_fd)


def test_an_o_path_fd_grants_no_reopen() -> None:
    path = _host_file("p", b"secret\n")
    os.chmod(path, 0o644)
    fd = os.open(path, os.O_PATH)
    try:
        r = py("import os, errno\n"
               f"try: open('/proc/self/fd/{fd}').read(); print('read')\n"
               "except OSError as e: print(errno.errorcode[e.errno])", pass_fds=[fd])
    finally:
        os.close(fd)
    assert (r.status.exit_code, r.out) == (0, "EACCES\n"), r.err
