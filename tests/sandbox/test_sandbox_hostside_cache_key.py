"""The filter cache's key is never left in place once a sandbox could read it.

The cache of compiled filters is trusted because its entries carry a MAC under a
key no sandbox can read. As an ordinary user any bind of the key's directory
exposes it (the sandbox is the user's uid); as root a plain bind does not (the
sandbox is an outer uid of its own, and the key is root's, 0600). But as root an
owned bind (idmapped: the source's owner, root, is the sandbox's uid there) and a
--file grant (opened with root's rights) hand the key over all the same. A
sandbox that read the key can sign any entry it likes: a filter that allows
everything, used by every later run. So the key such a sandbox could read must
be gone before it starts, and the attack, played out with the key it printed,
must change nothing a later run compiles.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.sandbox.sandbox_util import PY, default_profile, run, world_dir
from warden.profiles import cache
from warden.profiles.bpf import SECCOMP_RET_ALLOW
from warden.supervisor.sandbox import Outcome
from warden.supervisor.sandbox.hostpath import HostPathError

# The key at the path in argv[1], or through the fd a --file grant gave (WARDEN_FILES).
PRINT_KEY = """import os, sys
if sys.argv[1] == "grant":  # the fd itself: reopening it by /proc would check the mode
    data = os.read(int(os.environ["WARDEN_FILES"].split(":")[0]), 64)
else:
    data = open(sys.argv[1], "rb").read()
sys.stdout.write(data.hex())
"""


def _allow_all() -> bytes:
    """One BPF instruction: return SECCOMP_RET_ALLOW (struct sock_filter, 8 bytes)."""
    return (0x06).to_bytes(2, "little") + b"\0\0" + SECCOMP_RET_ALLOW.to_bytes(4, "little")


@pytest.fixture()
def homes(monkeypatch: pytest.MonkeyPatch) -> Path:
    d = Path(world_dir())
    monkeypatch.setenv("XDG_STATE_HOME", str(d / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(d / "cache"))
    monkeypatch.delenv(cache.DISABLE_VAR, raising=False)
    return d


def _leak(homes: Path, how: str) -> tuple[str, str]:
    """Run a sandbox given the key by `how`; (the key it printed or "", the run's warnings)."""
    profile = default_profile()
    assert run(["/bin/true"], profile).status.outcome is Outcome.OK  # makes the key
    key_file = cache.key_path()
    assert key_file is not None and key_file.is_file()
    kw: dict[str, object]
    if how == "owned bind":
        kw = {"owned_ro_binds": [f"{key_file.parent}:/s"]}
        inside = "/s/" + key_file.name
    else:
        kw = {"files": [f"{key_file}:r"]}
        inside = "grant"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            r = run([PY, "-I", "-S", "-c", PRINT_KEY, inside], profile, **kw)
        except HostPathError as e:
            # The key was discarded before the grant was opened: nothing to hand over.
            assert how == "file grant" and "does not exist" in str(e), e
            return "", " ".join(str(w.message) for w in caught)
    assert r.status.outcome in (Outcome.OK, Outcome.EXITED), r
    return r.out.strip(), " ".join(str(w.message) for w in caught)


@pytest.mark.parametrize("how", ["owned bind", "file grant"])
def test_a_key_the_sandbox_could_read_is_discarded_first(homes: Path, how: str) -> None:
    if how == "owned bind" and os.geteuid() != 0:
        pytest.skip("needs root: an owned bind of a directory of your own is a plain bind, "
                    "and a plain bind of the key already discards it (test_profiles_cache)")
    key_file = cache.key_path()
    assert key_file is not None
    leaked, said = _leak(homes, how)
    now = key_file.read_bytes().hex() if key_file.exists() else None
    assert now is None or now != leaked, f"the sandbox read the key that is still in use ({how})"
    assert "the key was discarded" in said, said
    if leaked:
        # The attack itself: sign an allow-everything filter under the leaked key for the
        # profile's policy; the next run must not get it.
        profile = default_profile()
        name = cache.policy_key(profile.seccomp, kill_as_notify=True)
        assert name is not None
        where = cache.cache_dir()
        assert where is not None
        cache.store(where, name, _allow_all(), bytes.fromhex(leaked))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cache.CacheWarning)
            code = cache.cached_compile(profile.seccomp, kill_as_notify=True)
        assert code != _allow_all()
