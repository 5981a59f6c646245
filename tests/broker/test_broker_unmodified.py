"""An unmodified program (python3) under the transparent broker: its own open() of a
brokered file and its own urllib fetch from a host-side server work through the
supervisor; without the address rule the same fetch is refused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.harness import run
from tests.broker.web import PAGE, serving
from tests.interpreter import PYTHON
from warden.supervisor.broker.addresses import AddressRule
from warden.supervisor.broker.paths import PathRule
from warden.supervisor.broker.policy import AuditRecord, Policy


@pytest.fixture
def web() -> Iterator[int]:
    with serving() as port:
        yield port


CODE = """
import sys, urllib.request
print(open(sys.argv[1]).read())
try:
    print(urllib.request.urlopen(sys.argv[2], timeout=20).read().decode())
except OSError as e:
    print("fetch failed:", getattr(e, "reason", e))
"""


def _program(path: str, url: str) -> str:
    done = subprocess.run([PYTHON, "-I", "-S", "-c", CODE, path, url], capture_output=True,
                          timeout=60, check=False)
    return done.stdout.decode() + done.stderr.decode()


def test_python3_reads_a_brokered_file_and_fetches_a_url(tmp_path: Path, web: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("brokered input")
    path, url = str(data / "input.txt"), f"http://127.0.0.1:{web}/"
    records: list[AuditRecord] = []
    with Policy.build("sb-py", paths=[PathRule.read(str(data))],
                      addresses=[AddressRule.parse(f"127.0.0.1:{web}")],
                      on_record=records.append) as pol:
        out = run(pol, lambda: _program(path, url))
    assert out == f"brokered input\n{PAGE.decode()}\n"
    allowed = [(r.kind, r.request) for r in records if r.decision == "allowed"]
    assert allowed == [("open", path), ("connect", f"127.0.0.1 port {web}/tcp")]

    with Policy.build("sb-py", paths=[PathRule.read(str(data))]) as pol:
        out = run(pol, lambda: _program(path, url))
    assert out == "brokered input\nfetch failed: [Errno 13] Permission denied\n"
