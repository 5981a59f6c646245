"""Every namespace is new; the host's processes, files, loopback and abstract sockets are
out of reach."""

from __future__ import annotations

import os
import socket

import pytest

from tests.sandbox.sandbox_util import MODE, WORKTREE, py, run

NS = ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup")


def test_every_namespace_is_new() -> None:
    r = py("import os, json; print(json.dumps({n: os.readlink('/proc/self/ns/' + n) "
           f"for n in {NS!r}}}))")
    assert r.status.outcome.value == "ok", r
    inside = r.json()
    for n in NS:
        assert inside[n] != os.readlink(f"/proc/self/ns/{n}"), n


def test_workload_is_pid_2_under_an_init_and_sees_no_host_process() -> None:
    r = py("import os, json; print(json.dumps([os.getpid(), os.getppid(), "
           "sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]))")
    pid, ppid, visible = r.json()
    assert (pid, ppid) == (2, 1)
    assert visible == [1, 2]


def test_host_pid_cannot_be_signalled() -> None:
    r = py(f"import os\ntry:\n    os.kill({os.getpid()}, 0)\n    print('reached')\n"
           "except OSError as e:\n    print(e.errno)")
    assert r.out.strip() == "3"  # ESRCH: the supervisor's pid does not exist in there


def test_host_files_are_not_there() -> None:
    r = py("import os, json; print(json.dumps({p: os.path.exists(p) for p in "
           f"['/etc/shadow', '/root', '/home', '/work', {WORKTREE!r}, '/var', '/run', '/sys']}}))")
    assert not any(r.json().values()), r.json()


def test_root_is_a_readonly_tmpfs_holding_only_the_binds() -> None:
    r = py("import os, json\n"
           "try:\n    open('/newfile', 'w'); w = 'created'\n"
           "except OSError as e:\n    w = e.errno\n"
           "print(json.dumps([sorted(os.listdir('/')), w]))")
    listing, write = r.json()
    assert write == 30  # EROFS
    assert set(listing) <= {"usr", "bin", "sbin", "lib", "lib64", "lib32", "etc", "proc",
                            "dev", "tmp"}


def test_binds_are_readonly_nosuid_nodev() -> None:
    r = py("import os, json; v = os.statvfs('/usr'); "
           "print(json.dumps([bool(v.f_flag & os.ST_RDONLY), bool(v.f_flag & os.ST_NOSUID), "
           "bool(v.f_flag & os.ST_NODEV)]))\n"
           "import sys\n"
           "try:\n    open('/usr/warden-probe', 'w')\nexcept OSError as e:\n"
           "    print(e.errno, file=sys.stderr)")
    assert r.json() == [True, True, True]
    assert r.err.strip() == "30"


def test_dev_holds_only_the_five_nodes() -> None:
    r = py("import os, json; print(json.dumps(sorted(os.listdir('/dev'))))")
    assert r.json() == sorted(["null", "zero", "full", "random", "urandom", "fd", "stdin",
                               "stdout", "stderr", "shm", "pts", "ptmx"])
    r = run(["/bin/sh", "-c", "head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo ok"])
    assert r.out.split() == ["4", "ok"]


def test_tmp_is_private_and_size_capped() -> None:
    marker = f"/tmp/warden-host-marker-{os.getpid()}"
    with open(marker, "w"):
        pass
    try:
        r = py("import os, json\n"
               f"seen = os.path.exists({marker!r})\n"
               "n = 0\n"
               "try:\n"
               "    with open('/tmp/fill', 'wb') as f:\n"
               "        for _ in range(64):\n"
               "            f.write(b'x' * (1 << 20)); f.flush(); n += 1\n"
               "except OSError as e:\n    err = e.errno\n"
               "print(json.dumps([seen, n, err]))", tmp_size=4 << 20)
    finally:
        os.unlink(marker)
    seen, written_mib, err = r.json()
    assert not seen
    assert written_mib <= 4 and err == 28  # ENOSPC


def test_hostname_is_warden_and_loopback_is_up_but_alone() -> None:
    r = py("import socket, json, os\n"
           "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
           "c = socket.create_connection(s.getsockname())\n"
           "print(json.dumps([socket.gethostname(), sorted(os.listdir('/proc/self/net/dev_snmp6') "
           "if os.path.exists('/proc/self/net/dev_snmp6') else ['lo'])]))")
    assert r.json()[0] == "warden"
    assert r.json()[1] == ["lo"]


def test_host_loopback_and_abstract_sockets_are_unreachable() -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    port = tcp.getsockname()[1]
    name = f"\0warden-test-{os.getpid()}"
    ab = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ab.bind(name)
    ab.listen(1)
    try:
        r = py("import socket, json\nout = []\n"
               f"for fam, addr in ((socket.AF_INET, ('127.0.0.1', {port})), "
               f"(socket.AF_UNIX, {name!r})):\n"
               "    s = socket.socket(fam)\n"
               "    try:\n        s.connect(addr); out.append('connected')\n"
               "    except OSError as e:\n        out.append(e.errno)\n"
               "print(json.dumps(out))")
        assert r.json() == [111, 111]  # ECONNREFUSED: its own empty loopback and namespace
    finally:
        tcp.close()
        ab.close()


def test_share_net_opts_in_to_the_host_network() -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    try:
        r = py(f"import socket; socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]})); "
               "print('connected')", share_net=True)
        assert r.out.strip() == "connected"
    finally:
        tcp.close()


def test_landlock_stops_a_passed_directory_fd_from_reaching_unbound_files() -> None:
    """A directory fd from outside the new root is a path the mount namespace
    missed; Landlock refuses to open anything beneath it."""
    from tests.sandbox.sandbox_util import world_dir

    d = world_dir()
    with open(os.path.join(d, "host-file"), "w") as f:
        f.write("host data")
    os.chmod(os.path.join(d, "host-file"), 0o644)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    passed = os.dup2(dfd, next(n for n in range(50, 300) if not _open(n)))
    try:
        r = py("import os, json\n"
               f"try:\n    os.open('host-file', os.O_RDONLY, dir_fd={passed}); got = 'opened'\n"
               "except OSError as e:\n    got = e.errno\n"
               "print(json.dumps([got, len(os.listdir('/usr/bin')) > 0]))", pass_fds=[passed])
    finally:
        os.close(passed)
        os.close(dfd)
    assert r.status.landlock_abi > 0
    assert r.json() == [13, True]  # EACCES from Landlock; bound paths still readable


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_the_status_names_what_the_sandbox_went_without() -> None:
    base = py("pass").status.weakened
    # As root with a cgroup nothing is missing; an ordinary user's sandbox may share the
    # user's ids and go without a memory cgroup (test_sandbox_accounting.py), and says so.
    assert base == () if MODE == "root" else all(
        w.startswith(("outer ids", "memory limit")) for w in base)
    assert py("pass", share_net=True).status.weakened == (
        "network namespace (shared with the host: --share-net or the profile)", *base)


def test_binds_tmpfs_and_chdir_options() -> None:
    from tests.sandbox.sandbox_util import world_dir
    from warden.supervisor.sandbox import ids

    rw = world_dir()
    os.chmod(rw, 0o777)
    ro = world_dir()
    with open(os.path.join(ro, "in.txt"), "w") as f:
        f.write("input")
    os.chmod(os.path.join(ro, "in.txt"), 0o644)
    r = py("import os, json\n"
           "open('/out/result.txt', 'w').write(open('/data/in.txt').read().upper())\n"
           "open('/scratch/x', 'w').write('x')\n"
           "try:\n    open('/data/new', 'w'); ro = 'writable'\n"
           "except OSError as e:\n    ro = e.errno\n"
           "print(json.dumps([os.getcwd(), ro, os.statvfs('/scratch').f_blocks > 0]))",
           ro_binds=[f"{ro}:/data"], binds=[f"{rw}:/out"], tmpfs=["/scratch"], chdir="/out")
    assert r.json() == ["/out", 30, True], r
    with open(os.path.join(rw, "result.txt")) as f:
        assert f.read() == "INPUT"
    # Files the sandbox writes belong to its outer id: never root.
    owner = os.stat(os.path.join(rw, "result.txt")).st_uid
    if MODE == "root":  # the sandbox's own id, from the range
        assert ids.DEFAULT_RANGE[0] <= owner < sum(ids.DEFAULT_RANGE)
    elif ids.subordinate_ids() is None:
        assert owner == os.getuid()
    assert owner != 0


def test_binds_stay_readonly_nosuid_nodev_through_the_pre_5_12_remount_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 5.12 have no mount_setattr(2): the sandbox then remounts,
    keeping the flags the kernel locked. That path runs here by making our
    wrapper answer ENOSYS (the remounts themselves are real)."""
    import errno as errno_

    from warden.supervisor.sandbox import _sys

    def no_mount_setattr(*_args: object, **_kw: object) -> None:
        raise OSError(errno_.ENOSYS, "mount_setattr")

    monkeypatch.setattr(_sys, "mount_setattr", no_mount_setattr)
    r = py("import os, json; v = os.statvfs('/usr'); r = os.statvfs('/'); "
           "print(json.dumps([bool(v.f_flag & f) for f in (os.ST_RDONLY, os.ST_NOSUID, "
           "os.ST_NODEV)] + [bool(r.f_flag & os.ST_RDONLY)]))")
    assert r.json() == [True, True, True, True], r


def test_a_bind_below_tmp_is_visible_on_the_private_tmp() -> None:
    """The private /tmp lies under the binds: a checkout in /tmp/... can be bound at its path."""
    from tests.sandbox.sandbox_util import world_dir

    d = world_dir()  # itself under the host's /tmp
    with open(os.path.join(d, "note"), "w") as f:
        f.write("bound")
    os.chmod(os.path.join(d, "note"), 0o644)
    r = py("import json, os\n"
           f"note = open({d!r} + '/note').read()\n"
           "open('/tmp/mine', 'w').write('x')\n"
           "print(json.dumps([note, sorted(os.listdir('/tmp'))]))",
           ro_binds=[d])
    # /tmp holds the bind's mount point (its first component below /tmp) and the
    # file the sandbox made: nothing of the host's /tmp.
    top = os.path.relpath(d, "/tmp").split("/")[0]
    assert r.json() == ["bound", sorted([top, "mine"])], r
