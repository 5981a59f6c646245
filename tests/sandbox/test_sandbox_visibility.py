"""What a sandbox can see of its host: the caller's command line and environment, its
session keyring, and (Landlock scopes) its signals and abstract unix sockets.

Each test runs a real child that looks, under a filter that lets the call reach the
kernel, and reports what it saw; the same suite runs as root and as an ordinary uid.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import socket
import subprocess

import pytest

from tests.sandbox.sandbox_util import PY, PYTHON, WORKTREE, default_profile, py, supervisor_env
from warden.supervisor.sandbox import landlock

_READ_ALL = """
import glob
seen = {}
for path in glob.glob('/proc/[0-9]*/cmdline') + glob.glob('/proc/[0-9]*/environ'):
    try:
        seen[path] = open(path, 'rb').read().decode('latin-1')
    except OSError:
        pass
print(__import__('json').dumps(seen))
"""


def _warden(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", "run", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_warden_run_init_shows_neither_its_argv_nor_its_environment() -> None:
    """`warden run --env TOKEN=... --hostname ...` with a secret in its own environment:
    the sandbox's init (pid 1, a fork of warden) shows a title, no option, no variable.
    The workload's own environment holds what --env gave it, and nothing else of warden's."""
    given, own = "given" + secrets.token_hex(8), "own" + secrets.token_hex(8)
    env = supervisor_env()
    env["WARDEN_TEST_SECRET"] = own
    r = _warden("-q", "--env", f"TOKEN={given}", "--", PY, "-I", "-S", "-c", _READ_ALL, env=env)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["/proc/1/cmdline"].startswith("warden-init\0")
    assert given not in seen["/proc/1/cmdline"] and "--env" not in seen["/proc/1/cmdline"]
    assert all(own not in text for text in seen.values()), seen
    assert given not in seen.get("/proc/1/environ", "")


_API = """
import sys
from warden.profiles import load_profile
from warden.supervisor.sandbox import build_spec, spawn
box = spawn(build_spec([{py!r}, "-I", "-S", "-c", {code!r}], load_profile("default")))
st = box.wait(60)
box.close_channel()
sys.exit(0 if st is not None and st.exit_code == 0 else 1)
"""


def test_api_sandbox_shows_nothing_of_the_embedders_argv_or_environment() -> None:
    secret = "tok" + secrets.token_hex(10)
    env = supervisor_env()
    env["EMBEDDER_SECRET"] = secret
    r = subprocess.run([PYTHON, "-c", _API.format(py=PY, code=_READ_ALL),
                        f"--api-token={secret}"], capture_output=True, text=True, env=env,
                       timeout=120, cwd=WORKTREE)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert "/proc/1/cmdline" in seen  # the init was readable
    assert all(secret not in text for text in seen.values()), seen


# ------------------------------------------------------------------ keyring

_libc = ctypes.CDLL(None, use_errno=True)
_NR_ADD_KEY = {"x86_64": 248, "aarch64": 217}[os.uname().machine]
_NR_KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]

_KEY_PROBE = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
serial = {serial}
listed = any(int(l.split()[0], 16) == serial for l in open('/proc/keys') if l.strip())
buf = ctypes.create_string_buffer(256)
ret = libc.syscall({nr}, 11, serial, buf, 256)  # KEYCTL_READ
print(json.dumps([listed, ret, ctypes.get_errno(), buf.raw[:32].decode('latin-1')]))
"""


def test_sandbox_neither_lists_nor_reads_the_callers_session_keys() -> None:
    """A key in the caller's session keyring: the sandbox's /proc/keys does not list it
    and KEYCTL_READ by its serial is refused by the kernel (the filter allows keyctl)."""
    payload = b"warden-secret-" + secrets.token_hex(6).encode()
    serial = int(_libc.syscall(_NR_ADD_KEY, b"user", b"warden-test-key", payload,
                               len(payload), -3))  # KEY_SPEC_SESSION_KEYRING
    if serial == -1:
        pytest.skip(f"add_key: {os.strerror(ctypes.get_errno())}")
    try:
        r = py(_KEY_PROBE.format(serial=serial, nr=_NR_KEYCTL))
        assert r.status.exit_code == 0, r.err
        listed, ret, err, data = json.loads(r.out.strip().splitlines()[-1])
        assert not listed
        assert ret == -1 and err in (errno.EACCES, errno.ENOKEY), (ret, err)
        assert payload.decode() not in data
    finally:
        _libc.syscall(_NR_KEYCTL, 21, serial)  # KEYCTL_INVALIDATE


_KEYRING_OWNER = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(256)
n = libc.syscall({nr}, 6, -3, buf, 256)  # KEYCTL_DESCRIBE of KEY_SPEC_SESSION_KEYRING
print(json.dumps([n, ctypes.get_errno(), buf.value.decode('latin-1'), os.getuid(), os.getgid()]))
"""


def test_sandbox_session_keyring_is_owned_by_the_sandboxs_own_ids() -> None:
    """The init's new session keyring belongs to the sandbox's own ids (it is charged to
    them), never to an id the clone was made with: an id the namespace does not map
    (host root's, say) would read as the overflow id 65534."""
    r = py(_KEYRING_OWNER.format(nr=_NR_KEYCTL))
    assert r.status.exit_code == 0, r.err
    n, err, text, uid, gid = json.loads(r.out.strip().splitlines()[-1])
    assert n > 0, os.strerror(err)
    kind, key_uid, key_gid, _perm, _name = text.split(";", 4)
    assert kind == "keyring"
    assert (int(key_uid), int(key_gid)) == (uid, gid), text


# ------------------------------------------------------------------ Landlock scopes

needs_scopes = pytest.mark.skipif(landlock.abi_version() < 6,
                                  reason="Landlock scopes need ABI 6 (Linux 6.12)")


@needs_scopes
def test_workload_cannot_signal_its_init() -> None:
    """The init is outside the workload's Landlock domain: kill(1, SIGUSR1) is refused
    (without the scope the kernel would accept it and drop it: pid 1 has no handler)."""
    r = py("import os, signal\n"
           "try:\n    os.kill(1, signal.SIGUSR1); print(0)\n"
           "except OSError as e:\n    print(e.errno)\n")
    assert r.out.split() == [str(errno.EPERM)], r.err


@needs_scopes
def test_shared_network_sandbox_cannot_reach_the_hosts_abstract_sockets() -> None:
    """With the host's network namespace shared, only the scope keeps the sandbox from
    connecting to the host's abstract unix sockets."""
    name = "\0warden-test-" + secrets.token_hex(6)
    host = socket.socket(socket.AF_UNIX)
    host.bind(name)
    host.listen()
    try:
        r = py("import socket\ns = socket.socket(socket.AF_UNIX)\n"
               f"try:\n    s.connect({name!r}); print(0)\n"
               "except OSError as e:\n    print(e.errno)\n", default_profile(),
               share_net=True)
        assert r.out.split() == [str(errno.EPERM)], r.err
    finally:
        host.close()
