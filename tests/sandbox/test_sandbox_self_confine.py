"""The public self-confinement steps (warden.supervisor.sandbox.self_confine), in real processes,
and the supervisor using them rather than the package's private syscall wrappers."""

from __future__ import annotations

import ast
import fcntl
import json
import os
import traceback
from pathlib import Path
from typing import Any

from warden.supervisor.sandbox import self_confine

ROOT = Path(__file__).resolve().parents[2]


def _status_field(name: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(name)


def _inside(w: int) -> None:
    """In the new namespaces: apply each step and record what the kernel then reports."""
    seen: dict[str, Any] = {"pid": os.getpid()}
    self_confine.set_parent_death_signal()
    seen["caps_before"] = _status_field("CapEff")
    self_confine.set_dumpable(False)
    seen["dumpable"] = self_confine.is_dumpable()
    self_confine.clear_capabilities()
    seen["caps"] = [_status_field(k) for k in ("CapPrm", "CapEff", "CapInh", "CapAmb")]
    self_confine.set_no_new_privs()
    seen["nnp"] = _status_field("NoNewPrivs")
    extra = [fcntl.fcntl(w, fcntl.F_DUPFD, w + 1) for _ in range(2)]  # both above w
    self_confine.close_fds(min(extra))
    seen["closed"] = []
    for fd in extra:
        try:
            os.fstat(fd)
        except OSError:
            seen["closed"].append(fd)
    os.write(w, json.dumps(seen).encode())


def test_each_step_does_what_its_name_says() -> None:
    r, w = os.pipe()
    middle = os.fork()  # the raw clone wants a single-threaded caller
    if middle == 0:
        code = 1
        try:
            os.close(r)
            pid = self_confine.fork_into_new_namespaces()
            if pid == 0:
                try:
                    _inside(w)
                except BaseException:
                    traceback.print_exc()
                    os._exit(3)
                os._exit(0)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    assert os.waitstatus_to_exitcode(os.waitpid(middle, 0)[1]) == 0
    seen = json.loads(data)
    assert seen["pid"] == 1  # init of its own PID namespace
    assert seen["caps_before"] != "0000000000000000"  # the new user namespace granted them
    assert seen["caps"] == ["0000000000000000"] * 4
    assert seen["dumpable"] is False
    assert seen["nnp"] == "1"
    assert len(seen["closed"]) == 2


def test_the_supervisor_uses_no_private_module_of_the_sandbox() -> None:
    private = {"warden.supervisor.sandbox._sys", "warden.supervisor.sandbox.caps"}
    offenders = []
    for path in sorted((ROOT / "supervisor").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n in private]
    assert offenders == []
