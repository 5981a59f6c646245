"""`warden run` with the filter cache, attacked from real sandboxes.

A sandbox given a writable bind of the cache directory rewrites its entry as
a one-instruction RET_ALLOW filter, with the old plain digest or a MAC under
a guessed key: the next run is still filtered (the unlisted move_pages is
reported by the kernel as a violation), warns naming the entry, and replaces
it. A run whose binds cover the cache gets none (an entry that would change
its behaviour is neither read nor rewritten); a key that is not private means
no cache; a sandbox that can see the key's directory never reads the key.
As root the sandbox runs as another uid and cannot even write the cache, so
there the test does the write itself to exercise the same check.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import MODE, PYTHON, supervisor_env

PY = "/usr/bin/python3"
# move_pages(self, 1 page, MPOL_MF_MOVE_ALL): default kills it; where a filter
# let it through, the kernel refuses it (no CAP_SYS_NICE): PermissionError.
UNLISTED = [
    PY, "-I", "-S", "-c",
    "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
    "libc.syscall(279, 0, 1, 0, 0, 0, 4); raise OSError(ctypes.get_errno(), 'move_pages')",
]
ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW

# Run inside the sandbox with the cache directory bound writable at /c.
FORGE = r"""
import os, sys
from _blake2 import blake2b
ALLOW_ALL = bytes.fromhex("060000000000ff7f")
how = sys.argv[1]
try:
    names = [n for n in os.listdir("/c") if not n.startswith(".")]
    for name in names:
        if how == "old unkeyed digest":
            head = b"warden-bpf-cache 2\n"
            mac = blake2b(name.encode() + b"\n" + ALLOW_ALL, digest_size=32)
        else:
            head = b"warden-bpf-cache 3\n"
            mac = blake2b(key=bytes(32), digest_size=32, person=b"warden-bpf")
            mac.update(head + name.encode() + b"\n" + ALLOW_ALL)
        data = head + name.encode() + b"\n" + mac.hexdigest().encode() + b"\n\n" + ALLOW_ALL
        with open("/c/." + name, "wb") as f:
            f.write(data)
        os.chmod("/c/." + name, 0o600)
        os.replace("/c/." + name, "/c/" + name)
    print("forged", len(names))
except OSError as e:
    print("refused", e.errno)
"""


def warden(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**supervisor_env(), "XDG_CACHE_HOME": str(home / "cache"),
           "XDG_STATE_HOME": str(home / "state")}
    env.pop("WARDEN_NO_CACHE", None)
    return subprocess.run([PYTHON, "-m", "warden", "run", "--json-status", "-", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def status(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def _program_said(r: subprocess.CompletedProcess[str]) -> str:
    """The program's first line (on stderr: with --json-status -, stdout is the record's)."""
    return next(ln for ln in r.stderr.splitlines()
                if ln and not ln.startswith(("warden", " ")) and "Warning:" not in ln)


def entries(home: Path) -> list[Path]:
    d = home / "cache" / "warden" / "seccomp"
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.exists() else []


def key_file(home: Path) -> Path:
    return home / "state" / "warden" / "cache.key"


def assert_filtered(r: subprocess.CompletedProcess[str]) -> None:
    """move_pages was stopped by the filter and reported from the kernel."""
    assert r.returncode == 128 + signal.SIGSYS, r.stdout + r.stderr
    st = status(r)
    assert st["outcome"] == "seccomp_violation"
    assert st["violation"]["syscall"] == "move_pages"  # type: ignore[index]


def plant_allow_all(home: Path) -> Path:
    """The control's tool: an allow-all entry MACed with the real key, as warden writes."""
    from warden.profiles import cache

    (entry,) = entries(home)
    cache.store(entry.parent, entry.name, ALLOW_ALL, key_file(home).read_bytes())
    return entry


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


def test_the_first_run_fills_the_cache_privately(home: Path) -> None:
    r = warden(home, "--", "/bin/true")
    assert (r.returncode, status(r)["outcome"]) == (0, "ok"), r.stderr
    (entry,) = entries(home)
    assert entry.stat().st_mode & 0o777 == 0o600 and entry.stat().st_uid == os.geteuid()
    assert entry.parent.stat().st_mode & 0o777 == 0o700
    key = key_file(home)
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert key.parent.stat().st_mode & 0o777 == 0o700


def test_control_an_entry_with_the_real_key_changes_what_the_sandbox_gets(home: Path) -> None:
    """Proves the attack tests can fail: the same allow-all body, MACed with the real
    key, is what the sandbox gets. The key is the whole of the defence."""
    assert_filtered(warden(home, "--", *UNLISTED))
    plant_allow_all(home)
    r = warden(home, "--", *UNLISTED)
    # No filter stopped the call: the kernel itself refused it (no CAP_SYS_ADMIN).
    assert (r.returncode, status(r)["outcome"]) == (1, "exited"), r.stdout + r.stderr
    assert "PermissionError" in r.stderr


@pytest.mark.parametrize("how", ["old unkeyed digest", "guessed key"])
def test_a_sandbox_that_rewrites_the_cache_does_not_unfilter_later_runs(home: Path,
                                                                        how: str) -> None:
    assert_filtered(warden(home, "--", *UNLISTED))
    (entry,) = entries(home)
    cache_dir = entry.parent
    r = warden(home, "--bind", f"{cache_dir}:/c", "--", PY, "-I", "-S", "-c", FORGE, how)
    assert r.returncode == 0, r.stdout + r.stderr
    # With --json-status -, stdout holds the record alone; the program's own output is on
    # stderr, with warden's warnings.
    said = next(ln for ln in r.stderr.splitlines() if ln.startswith(("forged", "refused")))
    if MODE == "user":
        assert said == "forged 1"  # the sandbox shares our uid: it really wrote the entry
    else:
        assert said == "refused 13"  # root's 0700 cache is out of the outer uid's reach
        # Stand in for the attacker with the same bytes, to test the check all the same.
        subprocess.run([PYTHON, "-I", "-S", "-c", FORGE.replace('"/c', f'"{cache_dir}'), how],
                       check=True, capture_output=True)
    assert entry.read_bytes().endswith(ALLOW_ALL)
    r = warden(home, "--", *UNLISTED)
    assert_filtered(r)
    assert f"filter cache entry {entry} failed authentication" in r.stderr
    assert not entry.read_bytes().endswith(ALLOW_ALL)  # replaced by a fresh compile
    r = warden(home, "--", *UNLISTED)
    assert_filtered(r)
    assert "failed authentication" not in r.stderr


@pytest.mark.parametrize("bind", ["cache dir", "its parent", "the home above both"])
def test_a_run_whose_bind_covers_the_cache_gets_no_cache(home: Path, bind: str) -> None:
    assert_filtered(warden(home, "--", *UNLISTED))
    entry = plant_allow_all(home)  # would let move_pages through if it were read
    planted = entry.read_bytes()
    source = {"cache dir": entry.parent, "its parent": entry.parent.parent,
              "the home above both": home}[bind]
    r = warden(home, "--bind", f"{source}:/x", "--", *UNLISTED)
    assert_filtered(r)
    assert entry.read_bytes() == planted  # neither read nor rewritten
    assert entries(home) == [entry]
    if bind != "the home above both":
        # Read-only the same bind leaves the cache on (the control): the entry is used.
        r = warden(home, "--ro-bind", f"{source}:/x", "--", *UNLISTED)
        assert status(r)["outcome"] == "exited", r.stdout + r.stderr


def test_a_key_that_is_not_private_means_no_cache(home: Path) -> None:
    assert_filtered(warden(home, "--", *UNLISTED))
    entry = plant_allow_all(home)
    planted = entry.read_bytes()
    key_file(home).chmod(0o644)
    r = warden(home, "--", *UNLISTED)
    assert_filtered(r)
    assert f"the filter cache's key {key_file(home)} is not private" in r.stderr
    assert entry.read_bytes() == planted


READ_KEY = r"""
import sys
try:
    print("read", len(open(sys.argv[1], "rb").read()))
except OSError as e:
    print("no", e.errno)
"""


@pytest.mark.parametrize("option", ["--ro-bind", "--bind"])
def test_a_sandbox_that_can_see_the_key_directory_never_reads_the_key(home: Path,
                                                                      option: str) -> None:
    assert_filtered(warden(home, "--", *UNLISTED))
    old = key_file(home).read_bytes()
    r = warden(home, option, f"{home / 'state'}:/s", "--", PY, "-I", "-S", "-c", READ_KEY,
               "/s/warden/cache.key")
    assert r.returncode == 0, r.stdout + r.stderr
    if MODE == "user":
        assert _program_said(r) == "no 2"  # discarded before the sandbox started
        assert "key was discarded" in r.stderr
        assert not key_file(home).exists()
        # That supervisor has exited: the next run makes a new key and is filtered.
        assert_filtered(warden(home, "--", *UNLISTED))
        assert len(key_file(home).read_bytes()) == 32 and key_file(home).read_bytes() != old
    else:
        assert _program_said(r) == "no 13"  # 0600 root: not the outer uid's to read
        assert key_file(home).read_bytes() == old
