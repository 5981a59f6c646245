"""Lookups of brokered paths (stat, lstat, statx, access) answered from the
supervisor's view, written into the child's memory; fstat by descriptor untouched."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from tests.broker.harness import errname, run
from warden.supervisor.broker.lookups import _NR
from warden.supervisor.broker.paths import PathRule
from warden.supervisor.broker.policy import AuditRecord, Policy

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def test_stat_and_access_of_brokered_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("12345")
    (data / "link").symlink_to("f.txt")
    (tmp_path / "secret").write_text("s")
    records: list[AuditRecord] = []
    d = str(data)

    def body() -> dict[str, object]:
        def st(path: str, follow: bool = True) -> object:
            try:
                s = os.stat(path, follow_symlinks=follow)
                return [s.st_size, stat.S_IFMT(s.st_mode)]
            except OSError as e:
                return errname(e)

        def statx(path: str) -> object:
            buf = ctypes.create_string_buffer(256)
            ret = libc.syscall(ctypes.c_long(_NR["statx"]), ctypes.c_int(AT_FDCWD),
                               path.encode(), ctypes.c_int(0), ctypes.c_uint(0xFFF), buf)
            if ret < 0:
                return errno.errorcode[ctypes.get_errno()]
            return int.from_bytes(buf.raw[40:48], "little")  # stx_size

        def bad_buffer(path: str) -> str:
            ret = libc.syscall(ctypes.c_long(_NR["newfstatat"]), ctypes.c_int(AT_FDCWD),
                               path.encode(), ctypes.c_void_p(8), ctypes.c_int(0))
            return "ok" if ret == 0 else errno.errorcode[ctypes.get_errno()]

        fd = os.open(f"{d}/f.txt", os.O_RDONLY)
        fstat_size = os.fstat(fd).st_size  # by descriptor: never sent to the broker
        os.close(fd)
        return {
            "stat": st(f"{d}/f.txt"), "exists": os.path.exists(f"{d}/f.txt"),
            "isdir": os.path.isdir(d), "missing": st(f"{d}/none"),
            "lstat_link": st(f"{d}/link", follow=False)[1] == stat.S_IFLNK,  # type: ignore[index]
            "stat_link": st(f"{d}/link"),
            "escape": st(f"{d}/../secret"), "statx": statx(f"{d}/f.txt"),
            "bad_buffer": bad_buffer(f"{d}/f.txt"),
            "read_ok": os.access(f"{d}/f.txt", os.R_OK),
            "write_no": os.access(f"{d}/f.txt", os.W_OK),
            "exec_no": os.access(f"{d}/f.txt", os.X_OK),
            "fstat": fstat_size,
        }

    with Policy.build("sb-look", paths=[PathRule.read(d)], on_record=records.append) as pol:
        # The name is gone from the child's view (as a brokered path is, in a sandbox);
        # the rule's held fd still leads there, so only the broker can answer.
        data.rename(tmp_path / "moved")
        got = run(pol, body, lookups=True)
    assert got == {"stat": [5, stat.S_IFREG], "exists": True, "isdir": True,
                   "missing": "ENOENT", "lstat_link": True, "stat_link": "EACCES",
                   "escape": "EACCES", "statx": 5, "bad_buffer": "EFAULT",
                   "read_ok": True, "write_no": False, "exec_no": False, "fstat": 5}
    assert any(r.request == f"newfstatat {d}/f.txt" and r.decision == "allowed"
               for r in records)
