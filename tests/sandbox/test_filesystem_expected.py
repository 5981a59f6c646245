"""A filesystem that ordinary programs expect: /dev/shm, files reopened by path,
inline data, symlinks, directories and a tmpfs wherever asked. Real kernel, real programs."""

from __future__ import annotations

import os
import subprocess
import textwrap

from sandbox_util import PYTHON, py, supervisor_env, world_dir

from warden.profiles import load_profile
from warden.supervisor.sandbox import SpecError, build_spec


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
