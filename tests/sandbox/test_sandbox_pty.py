"""Pseudo-terminals inside the sandbox: a devpts instance of its own at /dev/pts.

Programs that drive other programs through a terminal (script, expect, pty.spawn,
test suites) open /dev/ptmx. Each sandbox gets a new devpts instance, so it sees
the terminals it opened and none of the host's; TIOCSTI stays refused under
`default`, on its own terminals too."""

from __future__ import annotations

import json
import os
import shutil

from tests.sandbox.sandbox_util import PY, default_profile, run
from warden.supervisor.sandbox import Outcome
from warden.supervisor.sandbox.mounts import PTY_MAX


def _default(code: str) -> str:
    r = run([PY, "-I", "-S", "-c", code], default_profile(), bpf=None)
    assert r.status.outcome is Outcome.OK, (r.status, r.err)
    return r.out


def test_pty_openpty_and_os_openpty_work_under_default() -> None:
    out = _default("""if True:
        import json, os, pty, stat
        before = sorted(os.listdir("/dev/pts"))
        m, s = pty.openpty()
        m2, s2 = os.openpty()
        os.write(m, b"ping\\n")
        line = os.read(s, 100)
        st = os.stat(os.ttyname(s))
        print(json.dumps([before, sorted(os.listdir("/dev/pts")), os.ttyname(s),
                          os.ttyname(s2), line.decode(), stat.S_IMODE(st.st_mode),
                          st.st_uid, st.st_gid, os.getuid(), os.readlink("/dev/ptmx"),
                          os.isatty(s)]))
        """)
    (before, after, name, name2, line, mode, uid, gid, me, ptmx, tty) = json.loads(out)
    assert before == ["ptmx"]  # nothing of the host's, nothing opened yet
    assert after == ["0", "1", "ptmx"] and (name, name2) == ("/dev/pts/0", "/dev/pts/1")
    assert line == "ping\n" and tty is True
    assert (mode, uid, gid) == (0o620, me, me) and ptmx == "pts/ptmx"


def test_script_runs_a_command_on_a_terminal_under_default() -> None:
    script = shutil.which("script")
    assert script, "script (util-linux) is missing here: scripts/setup installs it"
    r = run([script, "-qc", "true", "/dev/null"], default_profile(), bpf=None)
    assert (r.status.outcome, r.status.exit_code) == (Outcome.OK, 0), (r.status, r.err)
    r = run([script, "-qec", "tty; exit 3", "/dev/null"], default_profile(), bpf=None)
    assert r.status.exit_code == 3 and r.out.strip() == "/dev/pts/0", (r.status, r.out, r.err)


def test_the_hosts_terminals_stay_invisible() -> None:
    """With a terminal open on the host (and the host's /dev/pts listing it), the
    sandbox's /dev/pts lists only its own multiplexer, and its devpts is another
    filesystem than the host's."""
    m, s = os.openpty()
    try:
        host_dev = os.stat(os.ttyname(s)).st_dev
        assert os.path.basename(os.ttyname(s)) in os.listdir("/dev/pts")
        out = _default("import json, os; print(json.dumps([sorted(os.listdir('/dev/pts')), "
                       "os.stat('/dev/pts').st_dev]))")
        listing, inside_dev = json.loads(out)
        assert listing == ["ptmx"] and inside_dev != host_dev
    finally:
        os.close(m)
        os.close(s)


def test_tiocsti_stays_refused_on_the_sandboxs_own_terminal() -> None:
    out = _default("""if True:
        import fcntl, os, pty, termios
        m, s = pty.openpty()
        try:
            fcntl.ioctl(s, termios.TIOCSTI, b"x")
            print("pushed")
        except OSError as e:
            print(e.errno)
        """)
    assert out == "1\n"  # EPERM, from the profile


def test_a_sandbox_holds_at_most_pty_max_terminals() -> None:
    """Pseudo-terminals are a machine-wide pool (kernel.pty.max): one sandbox cannot
    take them all. Its devpts refuses the next one (ENOSPC); closing one frees it."""
    out = _default(f"""if True:
        import os
        fds = [os.openpty() for _ in range({PTY_MAX})]
        try:
            os.openpty()
            print("more")
        except OSError as e:
            print(e.errno)
        os.close(fds[0][0])
        os.close(fds[0][1])
        os.openpty()
        print("again")
        """)
    assert out == "28\nagain\n"  # ENOSPC


def test_dev_ptmx_is_the_instances_own_multiplexer() -> None:
    out = _default("import json, os, stat; st = os.stat('/dev/ptmx'); "
                   "print(json.dumps([stat.S_ISCHR(st.st_mode), stat.S_IMODE(st.st_mode), "
                   "os.major(st.st_rdev), os.minor(st.st_rdev)]))")
    assert json.loads(out) == [True, 0o666, 5, 2]  # ptmxmode=0666, TTYAUX_MAJOR:2
