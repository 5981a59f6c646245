"""Every command of the README's quick tour runs as written, with `warden` on PATH.

The commands run in a copy of what they name (README.md, examples/), so the
files they write (st.json, the serve status socket) land there and the copy is
readable by the sandboxes' uids. `warden` is the installed console script when
this interpreter can run it, else the same entry point (`python -m warden`).
`warden serve` runs until the pools answer `warden status`, then gets Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.interpreter import EXTRA_PATH, PYTHON

ROOT = Path(__file__).resolve().parents[1]


def tour() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick tour", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def workspace() -> tuple[Path, dict[str, str]]:
    """A readable copy of the checkout's README.md and examples/, and an environment
    whose PATH finds `warden` and whose PYTHONPATH has nothing of the checkout."""
    work = Path(tempfile.mkdtemp(prefix="tour-"))
    work.chmod(0o755)
    shutil.copy(ROOT / "README.md", work)
    shutil.copytree(ROOT / "examples", work / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", "*.sock"))
    for d, _dirs, files in os.walk(work):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    # What this interpreter needs to find warden (the ordinary-uid run under the
    # system python has the venv's packages there), without the checkout.
    env = dict(os.environ)
    paths = (EXTRA_PATH, *env.get("PYTHONPATH", "").split(os.pathsep))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths
                                        if p and os.path.realpath(p) != str(ROOT))
    script = Path(sys.executable).parent / "warden"
    if sys.executable == PYTHON and os.access(script, os.X_OK):
        bindir = script.parent
    else:
        bindir = work / "bin"
        bindir.mkdir()
        (bindir / "warden").write_text(f"#!/bin/sh\nexec {shlex.quote(PYTHON)} -m warden \"$@\"\n")
        (bindir / "warden").chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return work, env


def sh(line: str, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", line], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)


def serve(line: str, work: Path, env: dict[str, str]) -> None:
    config = shlex.split(line, comments=True)[-1]
    sock = (work / config).with_suffix(".sock")
    srv = subprocess.Popen(["/bin/sh", "-c", f"exec {line}"], cwd=work, env=env,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not sock.exists() and srv.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        r = sh(f"warden status {shlex.quote(config)}", work, env)
        assert r.returncode == 0, (r.stderr, srv.poll())
        snap = json.loads(r.stdout)
        (pool,) = snap["pools"].values()
        assert pool["alive"] == pool["size"] >= 1, snap
        # The workers see the config's code path, read-only, and nothing else of the copy.
        for w in pool["workers"].values():
            try:
                info = Path(f"/proc/{w['pid']}/mountinfo").read_text()
            except PermissionError:
                continue  # another uid's process, as the ordinary user
            mounts = [m.split()[4] for m in info.splitlines()]
            assert str(work / "examples") in mounts, mounts
            assert not any(m in (str(work), str(ROOT)) for m in mounts), mounts
        srv.send_signal(signal.SIGINT)  # Ctrl-C
        _out, err = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert srv.returncode == 0, err
    assert not sock.exists()


def test_every_quick_tour_command_runs_as_written() -> None:
    work, env = workspace()
    lines = tour()
    assert len(lines) >= 5 and all(line.startswith("warden ") for line in lines)
    for line in lines:
        if line.startswith("warden serve "):
            serve(line, work, env)
            continue
        r = sh(line, work, env)
        assert r.returncode == 0, (line, r.stdout, r.stderr)
        if "hostname; id" in line:
            assert r.stdout.startswith("warden\nuid=1000"), r.stdout
        if "--json-status st.json" in line:
            assert r.stdout == "42\n"
            assert json.loads((work / "st.json").read_text())["outcome"] == "ok"
        if "--file README.md:r" in line:
            assert r.stdout.split() == [str((work / "README.md").stat().st_size)]
