"""Host paths warden opens with its own rights, attacked the way a sandbox can attack them.

Each attack is done by a real sandboxed child (`warden run` with a writable
bind) or is a file such a child left behind for a later run: a symbolic
link to a file the sandbox cannot reach, a FIFO, a rename loop. Each test
proves the attack failed (the target untouched, warden not blocked, the
right tree bound) and that warden said which path it refused, with exit 125.
The same tests run as root and as an ordinary uid: the "secret" is a 0600
file of the test's own uid that no sandbox is given.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import PYTHON, supervisor_env
from warden.supervisor.sandbox import hostpath

pytestmark = pytest.mark.usefixtures("needs_profiles")

HANG_GUARD = 120  # seconds; only so a regression fails instead of hanging the suite
SECRET = "the secret, which no sandbox may read or change\n"


@pytest.fixture
def needs_profiles() -> None:
    try:
        from warden.profiles import load_profile  # type: ignore[attr-defined]  # noqa: F401
    except ImportError:
        pytest.skip("the profiles package (load_profile) is not on this branch yet")


def warden(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", "run", *args], text=True,
                          env=supervisor_env(), timeout=HANG_GUARD,
                          **{"capture_output": True, **kw})  # type: ignore[call-overload]


@pytest.fixture
def area(tmp_path: Path) -> tuple[Path, Path]:
    """(a directory sandboxes may write, a secret file outside every sandbox)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # as root, the sandbox's outer uid writes here
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return shared, secret


def plant(shared: Path, script: str) -> None:
    """An earlier sandbox, given `shared` writable at /out, runs `script` there."""
    r = warden("--bind", f"{shared}:/out", "--", "/bin/sh", "-c", script)
    assert r.returncode == 0, r.stderr


def refused(r: subprocess.CompletedProcess[str], option: str, path: Path, why: str) -> None:
    assert r.returncode == 125, (r.returncode, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert option in line and str(path) in line and why in line, line
    assert "Traceback" not in r.stderr


# --json-status FILE

def test_status_link_left_by_an_earlier_sandbox_is_refused(area: tuple[Path, Path]) -> None:
    shared, secret = area
    plant(shared, f"ln -s {secret} /out/status.json")
    r = warden("--json-status", str(shared / "status.json"), "--", "/bin/true")
    refused(r, "--json-status", shared / "status.json", "is a symbolic link")
    assert secret.read_text() == SECRET


def test_status_inside_the_programs_writable_bind_is_refused(area: tuple[Path, Path]) -> None:
    shared, secret = area
    status = shared / "status.json"
    # The reproduction: the program itself swaps the file for a link.
    r = warden("--bind", f"{shared}:/out", "--json-status", str(status), "--", "/bin/sh", "-c",
               f"rm -f /out/status.json; ln -s {secret} /out/status.json")
    refused(r, "--json-status", status, "inside the writable bind")
    assert secret.read_text() == SECRET
    assert not os.path.lexists(status)  # refused before the program ran
    # The same directory reached through a deeper path is still inside the bind.
    (shared / "sub").mkdir(mode=0o777)
    r = warden("--bind", f"{shared}:/out", "--json-status", str(shared / "sub" / "s.json"),
               "--", "/bin/true")
    refused(r, "--json-status", shared / "sub" / "s.json", "inside the writable bind")


def test_status_is_written_through_the_fd_opened_before_the_run(
        area: tuple[Path, Path], tmp_path: Path) -> None:
    """Another sandbox, running at the same time with the status directory writable,
    renames the status file away and plants a link to the secret while the run is on."""
    shared, secret = area
    sync = tmp_path / "sync"
    sync.mkdir(mode=0o777)
    sync.chmod(0o777)
    status = shared / "status.json"
    attacker = subprocess.Popen(
        [PYTHON, "-m", "warden", "run", "--timeout", str(HANG_GUARD), "--bind",
         f"{shared}:/out", "--bind", f"{sync}:/sync", "--", "/bin/sh", "-c",
         "while [ ! -e /sync/go ]; do sleep 0.01; done; "
         f"mv /out/status.json /out/opened.json && ln -s {secret} /out/status.json; "
         "touch /sync/done"],
        env=supervisor_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        r = warden("--json-status", str(status), "--bind", f"{sync}:/sync", "--", "/bin/sh",
                   "-c", "touch /sync/go; while [ ! -e /sync/done ]; do sleep 0.01; done; exit 5")
    finally:
        _, err = attacker.communicate(timeout=HANG_GUARD)
    assert attacker.returncode == 0, err
    assert r.returncode == 5, r.stderr
    assert secret.read_text() == SECRET
    assert os.path.islink(status)
    # The record went to the file warden opened before the run, intact.
    record = json.loads((shared / "opened.json").read_text())
    assert (record["outcome"], record["exit_code"]) == ("exited", 5)


def test_a_fifo_at_the_status_path_does_not_block_warden(area: tuple[Path, Path]) -> None:
    shared, _secret = area
    plant(shared, "mkfifo /out/status.json")
    status = shared / "status.json"
    r = warden("--json-status", str(status), "--", "/bin/true")
    refused(r, "--json-status", status, "FIFO")
    # With someone holding the reading end, the open succeeds: the kind check refuses it.
    reader = os.open(status, os.O_RDONLY | os.O_NONBLOCK)
    try:
        r = warden("--json-status", str(status), "--", "/bin/true")
        refused(r, "--json-status", status, "it is a FIFO")
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)


# --json-status - and --json-status-fd

FORGE = ("printf '%s\\n' '{\"outcome\": \"ok\", \"exit_code\": 0, \"returncode\": 0}'; "
         "printf '{\"outcome\": '; exit 3")


def test_json_status_dash_carries_the_record_alone() -> None:
    r = warden("--json-status", "-", "--", "/bin/sh", "-c", FORGE)
    assert r.returncode == 3
    lines = r.stdout.splitlines()
    assert len(lines) == 1  # only the real record: the program's stdout went to stderr
    record = json.loads(lines[0])
    assert (record["outcome"], record["exit_code"]) == ("exited", 3)
    assert '"outcome": "ok"' in r.stderr


def test_json_status_dash_is_refused_when_the_program_shares_that_stream() -> None:
    r = warden("--json-status", "-", "--", "/bin/sh", "-c", FORGE, stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT, capture_output=False)
    assert r.returncode == 125
    assert r.stdout.strip().splitlines()[-1].startswith(
        "Error: --json-status -: refused, it is the same file as the program's stdout")


def test_json_status_fd_is_not_handed_to_the_program() -> None:
    rd, wr = os.pipe()
    try:
        r = warden("--json-status-fd", str(wr), "--", "/usr/bin/python3", "-I", "-S", "-c",
                   "import os, sys\n"
                   f"try: os.write({wr}, b'{{\"outcome\": \"ok\"}}\\n')\n"
                   f"except OSError as e: print('no-fd-{wr}', e.errno)\n"
                   "sys.exit(3)", pass_fds=(wr,))
    finally:
        os.close(wr)
    with os.fdopen(rd, "r") as f:
        lines = f.read().splitlines()
    assert r.returncode == 3, r.stderr
    assert r.stdout == f"no-fd-{wr} 9\n"  # EBADF: the program does not hold the descriptor
    assert len(lines) == 1
    assert json.loads(lines[0])["exit_code"] == 3


def test_json_status_fd_shared_with_the_program_is_refused() -> None:
    rd, wr = os.pipe()
    try:
        r = warden("--json-status-fd", str(wr), "--pass-fd", str(wr), "--", "/bin/true",
                   pass_fds=(wr,))
    finally:
        os.close(rd)
        os.close(wr)
    assert r.returncode == 125
    assert f"--json-status-fd {wr}: refused, it is the same file as the program's fd {wr}" \
        in r.stderr


# --file

@pytest.mark.parametrize("mode", ["r", "w", "a", "rw"])
def test_file_through_a_link_left_by_an_earlier_sandbox_is_refused(
        area: tuple[Path, Path], mode: str) -> None:
    shared, secret = area
    plant(shared, f"ln -s {secret} /out/data.txt; mkdir /out/d; ln -s {secret.parent} /out/up")
    for path in (shared / "data.txt", shared / "up" / "secret"):
        r = warden("--file", f"{path}:{mode}", "--", "/bin/sh", "-c",
                   "cat <&4; echo overwritten >&4")
        refused(r, f"--file {path}:{mode}", path, "is a symbolic link")
        assert "the secret" not in r.stdout
        assert secret.read_text() == SECRET
        assert secret.stat().st_mode & 0o777 == 0o600


def test_file_follow_is_the_users_explicit_choice(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("mine\n")
    (tmp_path / "link.txt").symlink_to(real)
    r = warden("--file", f"{tmp_path / 'link.txt'}:r:follow", "--", "/bin/sh", "-c", "cat <&4")
    assert (r.returncode, r.stdout) == (0, "mine\n"), r.stderr


def test_file_refuses_fifos_and_devices_unless_the_kind_is_named(area: tuple[Path, Path]) -> None:
    shared, _secret = area
    plant(shared, "mkfifo /out/pipe")
    fifo = shared / "pipe"
    for mode in ("r", "w"):
        r = warden("--file", f"{fifo}:{mode}", "--", "/bin/true")
        refused(r, f"--file {fifo}:{mode}", fifo, "FIFO")
    for dev in ("/dev/zero", "/dev/null"):
        r = warden("--file", f"{dev}:w", "--", "/bin/true")
        refused(r, f"--file {dev}:w", Path(dev), "it is a device")
        assert f"--file {dev}:w:device" in r.stderr  # says how to ask for it
    # Named, they are opened (without waiting: the FIFO has a writer here).
    holder = os.open(fifo, os.O_RDWR)
    try:
        os.write(holder, b"fifo data")
        r = warden("--file", f"{fifo}:r:fifo", "--file", "/dev/zero:r:device", "--",
                   "/bin/sh", "-c", "head -c 9 <&4; head -c 4 <&5 | od -An -tx1")
    finally:
        os.close(holder)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["fifo", "data", "00", "00", "00", "00"]


def test_file_w_creates_without_following_and_truncates_only_regular_files(
        tmp_path: Path) -> None:
    out = tmp_path / "new.txt"
    r = warden("--file", f"{out}:w", "--", "/bin/sh", "-c", "echo written >&4")
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "written\n"
    r = warden("--file", f"{out}:w", "--", "/bin/true")
    assert r.returncode == 0 and out.read_text() == ""


# Bind sources

RENAME_LOOP = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
os.chdir("/out")
while not os.path.exists("stop"):
    if libc.renameat2(-100, b"src", -100, b"swap", RENAME_EXCHANGE) != 0:
        raise SystemExit(os.strerror(ctypes.get_errno()))
"""


def test_bind_source_swapped_with_a_link_never_binds_the_other_tree(
        area: tuple[Path, Path], tmp_path: Path) -> None:
    """A concurrent sandbox exchanges a directory and a link to another tree in a loop
    (renameat2 RENAME_EXCHANGE) while runs bind the directory's path."""
    shared, _secret = area
    other = tmp_path / "other"
    other.mkdir()
    (other / "marker").write_text("other\n")
    (shared / "src").mkdir(mode=0o777)
    (shared / "src" / "marker").write_text("original\n")
    (shared / "swap").symlink_to(other)
    swapper = subprocess.Popen(
        [PYTHON, "-m", "warden", "run", "--timeout", str(HANG_GUARD), "--bind",
         f"{shared}:/out", "--", "/usr/bin/python3", "-I", "-S", "-c", RENAME_LOOP],
        env=supervisor_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[str, int] = {}
    try:
        while not (shared / "swap").is_dir() or (shared / "swap").is_symlink():
            assert swapper.poll() is None, swapper.stderr.read() if swapper.stderr else ""
            time.sleep(0.01)  # until the loop has made its first exchange
        for _ in range(24):
            r = warden("--ro-bind", f"{shared / 'src'}:/b", "--", "/bin/cat", "/b/marker")
            assert "other" not in r.stdout, "a run was given the other tree"
            if r.returncode == 0:
                assert r.stdout == "original\n"
                seen["original"] = seen.get("original", 0) + 1
            elif r.returncode == 125:
                # Resolved or re-resolved while the link was there: a clear refusal.
                assert "symbolic link" in r.stderr or "no longer the file" in r.stderr, r.stderr
                seen["refused"] = seen.get("refused", 0) + 1
            else:
                # Resolved as the link itself, which the sandbox gets as a link to a
                # path it does not have.
                assert r.returncode == 1 and "No such file" in r.stderr, r.stderr
                seen["link"] = seen.get("link", 0) + 1
    finally:
        (shared / "stop").touch()
        _, err = swapper.communicate(timeout=HANG_GUARD)
    assert swapper.returncode == 0, err
    assert (other / "marker").read_text() == "other\n"
    assert sum(seen.values()) == 24


def test_bind_source_replaced_after_warden_resolved_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The source is replaced at the worst moment: after the parent resolved it, before
    the child is cloned. As root the tree cloned from the parent's fd is bound; as an
    ordinary user the child, which binds by path, finds another file and refuses."""
    from tests.sandbox.sandbox_util import MODE, run
    from warden.supervisor.sandbox import SetupError, launch

    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("original\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "marker").write_text("other\n")
    for d in (tmp_path, src, other):
        d.chmod(0o755)
    real_prepare = launch.prepare

    def prepare_then_swap(spec: object) -> object:
        launched = real_prepare(spec)  # type: ignore[arg-type]
        src.rename(tmp_path / "moved")
        other.rename(src)
        return launched

    monkeypatch.setattr(launch, "prepare", prepare_then_swap)
    try:
        result = run(["/bin/cat", "/b/marker"], ro_binds=[f"{src}:/b"])
    except SetupError as e:
        assert MODE == "user"
        assert e.status.setup is not None and e.status.setup.step == "mount"
        assert f"{src} is no longer the file warden resolved" in e.status.setup.message
    else:
        assert MODE == "root"
        assert result.out == "original\n"


def test_status_file_that_is_also_a_file_grant_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "both.json"
    r = warden("--json-status", str(out), "--file", f"{out}:w", "--", "/bin/true")
    refused(r, "--json-status", out, "same file as the program's fd 4")


def test_a_link_before_the_last_component_of_a_bind_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "dir").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    src = tmp_path / "via" / "dir"
    r = warden("--ro-bind", f"{src}:/b", "--", "/bin/true")
    assert r.returncode == 125
    assert f"{src} was refused: {tmp_path / 'via'} is a symbolic link" in r.stderr


def test_mount_points_never_follow_a_link_left_in_a_writable_bind(
        area: tuple[Path, Path], tmp_path: Path) -> None:
    """A link planted in a writable bind, where a later run puts a nested mount point,
    would make the child's setup create directories and files (and mount) in a host
    directory outside every bind, with the child's rights, before its root is built."""
    shared, _secret = area
    victim = tmp_path / "victim"
    victim.mkdir()
    victim.chmod(0o777)  # writable by the sandbox's outer uid: only the link stands between
    plant(shared, f"ln -s /oldroot{victim} /out/sub; ln -s /oldroot{victim} /out/leaf")
    for args, step in (
            (["--ro-bind", "/etc/hostname:/out/sub/planted"], "bind /etc/hostname on"),
            (["--ro-bind", f"{tmp_path}:/out/leaf"], f"bind {tmp_path} on"),
            (["--tmpfs", "/out/sub/t"], "tmpfs"),
            (["--chdir", "/out/sub/work"], "chdir")):
        r = warden("--bind", f"{shared}:/out", *args, "--", "/bin/true")
        assert r.returncode == 125, r.stderr
        assert step in r.stderr and "in the sandbox is a symbolic link" in r.stderr, r.stderr
        assert list(victim.iterdir()) == []


# The mechanism itself, and warden serve's paths

def test_the_walk_without_openat2_refuses_links_too(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "lf").symlink_to(tmp_path / "d" / "f")
    monkeypatch.setattr(hostpath, "_openat2_missing", True)
    fd = hostpath.open_input(str(tmp_path / "d" / "f"), "test")
    assert os.read(fd, 1) == b"x"
    os.close(fd)
    for bad in (tmp_path / "l" / "f", tmp_path / "d" / "lf"):
        with pytest.raises(hostpath.HostPathError) as info:
            hostpath.open_input(str(bad), "test")
        assert "is a symbolic link" in str(info.value)


def test_serve_config_fifo_and_link_are_refused_without_blocking(tmp_path: Path) -> None:
    from warden.supervisor.serve_config import ConfigError, load_config

    fifo = tmp_path / "serve.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=f"config file: {fifo} was refused: it is a FIFO"):
        load_config(str(fifo))
    link = tmp_path / "link.toml"
    link.symlink_to(fifo)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        load_config(str(link))


def test_serve_status_socket_never_unlinks_or_follows_what_it_did_not_make(
        tmp_path: Path) -> None:
    from warden.supervisor.serve import StatusSocket
    from warden.supervisor.serve_config import ConfigError

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    for planted in ("file", "link"):
        path = tmp_path / f"s-{planted}.sock"
        if planted == "file":
            path.write_text("not a socket")
        else:
            path.symlink_to(victim)
        with pytest.raises(ConfigError, match=f"{path} was refused: it exists and is not a "
                           "socket of ours"):
            StatusSocket.place(str(path)).bind()
        assert os.path.lexists(path)
    assert victim.read_text() == "keep me"
    # A directory anyone may rename entries in (no sticky bit) is refused.
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by other users and not sticky"):
        StatusSocket.place(str(open_dir / "s.sock"))
    # A good place: mode 0600, reused after a previous server, removed at the end.
    good = tmp_path / "good.sock"
    for _ in range(2):
        place = StatusSocket.place(str(good))
        place.bind().close()  # as a crashed server would leave it
        assert stat.S_ISSOCK(good.lstat().st_mode) and good.lstat().st_mode & 0o777 == 0o600
        os.close(place.dir_fd)
    place = StatusSocket.place(str(good))
    place.bind()
    place.remove()
    assert not os.path.lexists(good)
