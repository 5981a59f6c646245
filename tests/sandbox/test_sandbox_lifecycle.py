"""How sandboxes end: outcomes and exit codes, violations observed by the supervisor, kill
and terminate, setup errors, the supervisor's death, and the clear error when user
namespaces are off."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import (
    PERMISSIVE,
    PY,
    PYTHON,
    TEST_PROFILE,
    collect,
    filter_notifying,
    py,
    run,
    start,
    supervisor_env,
    world_dir,
)
from warden.supervisor.sandbox import Outcome, Sandbox, SandboxError, SetupError, build_spec, spawn


def test_outcomes_and_exit_codes() -> None:
    assert run(["/bin/true"]).status.outcome is Outcome.OK
    st = run(["/bin/sh", "-c", "exit 3"]).status
    assert (st.outcome, st.exit_code, st.returncode) == (Outcome.EXITED, 3, 3)
    st = run(["/bin/sh", "-c", "kill -SEGV $$"]).status
    assert (st.outcome, st.exit_code, st.signal) == (Outcome.SIGNALED, 139, signal.SIGSEGV)


def test_seccomp_violation_is_reported_by_the_supervisor_with_name_and_args() -> None:
    bpf = filter_notifying("mkdir", "mkdirat")
    r = py("import os\nprint('before', flush=True)\nos.mkdir('/tmp/x', 0o712)\nprint('after')",
           bpf=bpf)
    st = r.status
    assert st.outcome is Outcome.SECCOMP_VIOLATION
    assert st.violation is not None
    assert st.violation.syscall in ("mkdir", "mkdirat")
    mode_arg = st.violation.args[1] if st.violation.syscall == "mkdir" else st.violation.args[2]
    assert mode_arg == 0o712
    assert st.violation.arch == "x86_64" or st.violation.arch == "aarch64"
    assert st.exit_code == 128 + signal.SIGSYS
    assert r.out == "before\n"  # the call never ran and nothing after it did


def test_violation_in_a_grandchild_kills_the_whole_sandbox() -> None:
    bpf = filter_notifying("mkdir", "mkdirat")
    r = py("import os, time\n"
           "if os.fork() == 0:\n    os.mkdir('/tmp/y')\n    os._exit(0)\n"
           "time.sleep(30)\nprint('the parent slept on')", bpf=bpf)
    assert r.status.outcome is Outcome.SECCOMP_VIOLATION
    assert r.out == ""  # the grandchild's call took its parent down with it


def test_kill_records_the_first_cause() -> None:
    box, out, err = start(["/bin/sleep", "30"])
    box.kill(Outcome.BAD_MESSAGE, "field x out of range")
    box.kill(Outcome.KILLED, "second cause loses")
    r = collect(box, out, err)
    assert (r.status.outcome, r.status.reason) == (Outcome.BAD_MESSAGE, "field x out of range")
    assert r.status.exit_code == 137


def test_terminate_forwards_sigterm_then_kills_after_grace() -> None:
    box, _out, _err = start(["/bin/sleep", "30"])
    st = box.terminate(grace=5)
    assert (st.outcome, st.signal) == (Outcome.SIGNALED, signal.SIGTERM)
    ready_r, ready_w = os.pipe()
    box, _out, _err = start([PY, "-I", "-S", "-c", "import os, signal, time\n"
                            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                            f"os.write({ready_w}, b'r')\ntime.sleep(30)"], pass_fds=[ready_w])
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"r"  # SIGTERM is ignored from here on
    os.close(ready_r)
    st = box.terminate(grace=0.3)
    assert st.outcome is Outcome.KILLED
    assert st.reason == "did not exit within 0.3s of SIGTERM"


def test_handle_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        Sandbox(object())


def test_context_manager_kills_on_failure_and_waits_on_success() -> None:
    spec = build_spec(["/bin/sleep", "30"], TEST_PROFILE, seccomp_filter=PERMISSIVE)
    with pytest.raises(RuntimeError), spawn(spec) as box:
        raise RuntimeError("embedder failed")
    assert box.status is not None and box.status.outcome is Outcome.KILLED
    assert box.status.reason == "the embedder raised RuntimeError"
    with spawn(build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=PERMISSIVE)) as box:
        pass
    assert box.outcome is Outcome.OK


def test_take_channel_hands_over_ownership_once() -> None:
    box, out, err = start([PY, "-I", "-S", "-c",
                           "import os, socket; s = socket.socket(fileno=int("
                           "os.environ['WARDEN_CHANNEL_FD'])); s.send(b'hello'); "
                           "print(s.recv(100).decode())"])
    sock = box.take_channel()
    assert box.channel is None
    with pytest.raises(SandboxError, match=r"^the channel was already taken$"):
        box.take_channel()
    with pytest.raises(AttributeError):
        box.channel = None  # type: ignore[misc]  # read-only: take_channel() is the way
    assert sock.recv(100) == b"hello"
    sock.send(b"back")
    r = collect(box, out, err)  # waits and closes the box's channel: not ours any more
    assert r.out.strip() == "back"
    assert sock.fileno() >= 0 and sock.recv(100) == b""  # still open, the peer gone
    sock.close()


def test_take_channel_without_a_channel_says_so() -> None:
    box, out, err = start(["/bin/true"], channel=False)
    with pytest.raises(SandboxError, match=r"^this sandbox was started without a channel$"):
        box.take_channel()
    assert collect(box, out, err).status.outcome is Outcome.OK


@pytest.mark.parametrize(("argv", "step", "code"), [
    (["/no/such/program"], "exec", 127),
    (["no-such-program-on-path"], "exec", 127),
    (["/etc/passwd"], "exec", 126),
])
def test_exec_failures_are_setup_errors_with_shell_codes(argv: list[str], step: str,
                                                         code: int) -> None:
    with pytest.raises(SetupError) as e:
        start(argv)
    st = e.value.status
    assert st.outcome is Outcome.SETUP_ERROR
    assert st.setup is not None and st.setup.step == step
    assert st.exit_code == code


def test_mount_failure_names_the_step_path_and_errno() -> None:
    with pytest.raises(SetupError) as e:
        start(["/bin/true"], ro_binds=["/usr/bin/env:/usr/newdir/env"])
    st = e.value.status
    assert st.setup is not None and (st.setup.step, st.setup.errno) == ("mount", 30)
    assert st.reason == ("sandbox setup failed at step 'mount' (EROFS): bind /usr/bin/env on "
                         "/usr/newdir/env: Read-only file system")
    assert st.exit_code == 125


def test_bind_sources_are_resolved_with_the_callers_rights() -> None:
    """The parent finds a bind's source (like --file): its ancestors may be closed to the child.

    As root the sandbox's outer uid could not traverse the 0700 directory, so
    this passes only because the parent clones the tree (open_tree) and the
    child attaches it; as an ordinary user the directory is the user's own.
    """
    d = world_dir()
    os.chmod(d, 0o700)
    inner = os.path.join(d, "sub")
    os.mkdir(inner, 0o755)
    Path(inner, "note").write_text("reached\n")
    os.chmod(os.path.join(inner, "note"), 0o644)
    box, out, err = start(["/bin/cat", "/data/note"], ro_binds=[inner + ":/data"])
    r = collect(box, out, err)
    assert (r.status.outcome, r.out) == (Outcome.OK, "reached\n"), r


def test_the_childs_own_identity_still_applies_inside_a_bind() -> None:
    """Resolving the source with the parent's rights grants nothing inside the tree.

    Mode 000: the sandbox's uid cannot read it whether it is an unprivileged
    outer uid (warden as root) or the file's own owner (an ordinary user)."""
    d = world_dir()
    Path(d, "secret").write_text("nobody reads this\n")
    os.chmod(os.path.join(d, "secret"), 0o000)
    box, out, err = start(["/bin/cat", "/data/secret"], ro_binds=[d + ":/data"])
    r = collect(box, out, err)
    assert r.status.outcome == Outcome.EXITED and r.out == "", r
    assert "Permission denied" in r.err


SUPERVISOR = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from tests.sandbox.sandbox_util import start
    if sys.argv[2] == "threaded":  # spawn() then takes its fork-then-clone path
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    box, out, err = start(["/bin/sleep", "60"])
    print(box.pid, flush=True)
    import time
    time.sleep(60)
""")


@pytest.mark.parametrize("threads", ["single", "threaded"])
def test_children_die_with_the_supervisor(threads: str) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sup = subprocess.Popen([PYTHON, "-c", SUPERVISOR, here, threads], stdout=subprocess.PIPE,
                           env=supervisor_env())
    try:
        assert sup.stdout is not None
        init_pid = int(sup.stdout.readline())
        workload = int(Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()[0])
        pidfds = [os.pidfd_open(init_pid), os.pidfd_open(workload)]
        sup.kill()
        sup.wait()
        # Each pidfd is readable once its process has ended; a survivor would
        # hang here until the test's own timeout fails it.
        for fd in pidfds:
            assert select.select([fd], [], [])[0] == [fd]
            os.close(fd)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()


USERNS_OFF = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from tests.sandbox.sandbox_util import start
    from warden.supervisor.sandbox import PreflightError
    try:
        start(["/bin/true"])
    except PreflightError as e:
        print(e)
        sys.exit(e.exit_code)
""")


def test_clear_error_when_user_namespaces_are_turned_off() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # A private user namespace in which creating further user namespaces is
    # switched off through the real sysctl: the kernel refuses, as on a host
    # with user.max_user_namespaces=0.
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1" "$2"',
         PYTHON, USERNS_OFF, here],
        capture_output=True, text=True, env=supervisor_env(), timeout=60)
    assert r.returncode == 125, r
    assert r.stdout.strip() == ("user namespaces are disabled: user.max_user_namespaces is 0; "
                                "enable them with: sysctl -w user.max_user_namespaces=15000")


def test_clear_error_when_the_user_namespace_limit_is_reached() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    # One user namespace allowed, and already taken by a sleeper: the next gets ENOSPC.
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         'echo 1 > /proc/sys/user/max_user_namespaces || exit 9; '
         'unshare --user sleep 30 </dev/null >/dev/null 2>&1 & taken=$!; '
         'while [ "$(readlink /proc/$taken/ns/user)" = "$(readlink /proc/$$/ns/user)" ]; '
         'do sleep 0.01; done; '
         '"$0" -c "$1" "$2"; rc=$?; kill $taken; exit $rc',
         PYTHON, USERNS_OFF, here],
        capture_output=True, text=True, env=supervisor_env(), timeout=60)
    assert r.returncode == 125, r
    assert r.stdout.strip() == ("the user namespace limit is reached (user.max_user_namespaces, "
                                "or the nesting depth of 32); raise it with: sysctl -w "
                                "user.max_user_namespaces=15000"), r


def test_spawn_from_a_threaded_process() -> None:
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(30,))
    t.start()
    try:
        r = py("import os; print(os.getpid(), os.getppid())")
    finally:
        stop.set()
        t.join()
    assert r.out.split() == ["2", "1"]
    assert r.status.outcome is Outcome.OK


def _fd_count() -> int:
    import gc

    gc.collect()  # objects of earlier tests that still hold fds
    return len(os.listdir("/proc/self/fd"))


def _leftover_cgroups() -> list[str]:
    found = []
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if d.startswith(f"warden-{os.getpid()}-")]
        if root.count("/") > 6:
            dirs[:] = []
    return found


def test_many_sandboxes_leave_no_fd_zombie_or_cgroup_behind() -> None:
    run(["/bin/true"])  # warm: the parent's own pidfd is opened once and kept
    before = _fd_count()
    boxes = [start(["/bin/sh", "-c", f"exit {i % 3}"]) for i in range(12)]
    results = [collect(b, o, e) for b, o, e in boxes]
    assert [r.status.returncode for r in results] == [i % 3 for i in range(12)]
    for i in range(12):
        box, out, err = start(["/bin/sleep", "30"])
        if i % 2:
            box.kill()
        else:
            box.terminate(grace=2)
        collect(box, out, err)
    assert _fd_count() == before
    assert _leftover_cgroups() == []
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every sandbox's init was reaped


def test_prepare_and_complete_let_another_process_do_the_clone() -> None:
    """What a zygote does: a helper that holds launch.child_fds() clones the init with
    CLONE_PARENT, so the init is still this process's child."""
    from warden.supervisor.sandbox import _sys, child_setup, prepare
    from warden.supervisor.sandbox.child import announce_init

    out = os.open(os.devnull, os.O_WRONLY)
    spec = build_spec([PY, "-I", "-S", "-c", "import os; os._exit(7)"], TEST_PROFILE,
                      seccomp_filter=PERMISSIVE, stdio=(out, out, out))
    launch = prepare(spec)
    helper = os.fork()
    if helper == 0:
        try:
            pid = _sys.clone(launch.plan.clone_flags | _sys.CLONE_PARENT)
            if pid == 0:
                child_setup(launch.plan, launch.child_sock, launch.child_status)
            announce_init(launch.child_sock, pid)
        finally:
            os._exit(0)
    launch.release_child_fds()
    box = launch.complete(helper)
    st = box.wait(30)
    os.close(out)
    assert st is not None and (st.outcome, st.returncode) == (Outcome.EXITED, 7)


def test_an_embedder_that_reaps_every_child_does_not_lose_the_outcome() -> None:
    box, out, err = start(["/bin/sh", "-c", "exit 5"])
    os.waitid(os.P_PIDFD, box.fds()[0], os.WEXITED)  # like a SIGCHLD handler's waitpid(-1)
    r = collect(box, out, err)
    assert (r.status.outcome, r.status.returncode) == (Outcome.EXITED, 5)


def test_a_dropped_handle_kills_its_sandbox_and_warns() -> None:
    import gc
    import warnings

    box, _out, _err = start(["/bin/sleep", "30"])
    pidfd = os.pidfd_open(box.pid)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del box
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert select.select([pidfd], [], [])[0] == [pidfd]  # it ended (else: the test's timeout)
    os.close(pidfd)
    assert _leftover_cgroups() == []


NON_DUMPABLE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from tests.sandbox.sandbox_util import collect, start
    from warden.supervisor.sandbox import _sys
    _sys.prctl(_sys.PR_SET_DUMPABLE, 0)  # as a supervisor marks itself
    for _ in range(20):  # a race with the child's own start would show up here
        box, out, err = start(["/bin/sh", "-c", "exit 4"])
        assert collect(box, out, err).status.returncode == 4
    print("ok")
""")


def test_a_non_dumpable_supervisor_can_start_sandboxes() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([PYTHON, "-c", NON_DUMPABLE, here], capture_output=True, text=True,
                       env=supervisor_env(), timeout=120)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_a_setup_error_is_reported_even_when_the_child_left_our_message_unread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a cgroup to join, "cgroup joined" is sent at once; the init fails
    # (no such program) before reading it, and closes with it unread, which the
    # kernel reports to the parent (ECONNRESET) ahead of the error message. A
    # slow parent (every read late) meets that every time.
    from warden.supervisor.sandbox import launch

    monkeypatch.setenv("WARDEN_CGROUP", "none")
    recv = launch._Setup.recv

    def slow_recv(self: launch._Setup) -> tuple[bytes, list[int]]:
        time.sleep(0.05)
        return recv(self)

    monkeypatch.setattr(launch._Setup, "recv", slow_recv)
    for _ in range(3):
        with pytest.raises(SetupError) as e:
            start(["no-such-program"])
        assert e.value.status.setup is not None
        assert (e.value.status.setup.step, e.value.status.exit_code) == ("exec", 127)


USERNS_FILTERED = textwrap.dedent("""
    import sys, pyseccomp
    sys.path.insert(0, sys.argv[1])
    from tests.sandbox.sandbox_util import start
    from warden.supervisor.sandbox import PreflightError, _sys
    # What a container runtime's filter does: clone with CLONE_NEWUSER refused.
    f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    f.add_rule(pyseccomp.ERRNO(1), "clone",
               pyseccomp.Arg(0, pyseccomp.MASKED_EQ, 0x10000000, 0x10000000))
    f.add_rule(pyseccomp.ERRNO(1), "unshare")
    f.load()
    try:
        start(["/bin/true"])
    except PreflightError as e:
        print(e)
        sys.exit(e.exit_code)
""")


def test_clear_error_when_a_seccomp_filter_refuses_user_namespaces() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([PYTHON, "-c", USERNS_FILTERED, here], capture_output=True, text=True,
                       env=supervisor_env(), timeout=60)
    assert r.returncode == 125, r
    assert r.stdout.startswith("this process runs under a seccomp filter that refuses to "
                               "create user namespaces; run warden without that filter"), r


def test_an_event_loop_can_drive_the_handle_without_blocking() -> None:
    """What an embedder's asyncio loop does: watch fds(), call service()."""
    import asyncio

    async def main() -> list[Outcome]:
        loop = asyncio.get_running_loop()
        bpf = filter_notifying("mkdir", "mkdirat")
        boxes = [start([PY, "-I", "-S", "-c", code], bpf=bpf)[0] for code in
                 ("import time; time.sleep(0.2)", "import os; os.mkdir('/tmp/x')",
                  "import time; time.sleep(30)")]
        boxes[2].kill(Outcome.KILLED, "cancelled by the loop")
        done = asyncio.Event()

        def on_ready() -> None:
            for box in boxes:
                box.service()
            if all(b.status is not None for b in boxes):
                done.set()

        watched = {fd for b in boxes for fd in b.fds()}
        for fd in watched:
            loop.add_reader(fd, on_ready)
        try:
            await asyncio.wait_for(done.wait(), 20)
        finally:
            for fd in watched:
                loop.remove_reader(fd)
        return [b.status.outcome for b in boxes if b.status is not None]

    assert asyncio.run(main()) == [Outcome.OK, Outcome.SECCOMP_VIOLATION, Outcome.KILLED]
