"""An independent witness of the sandbox's privileges: python-prctl, a C binding that
shares no code with warden's own prctl/capset calls, reads inside a sandbox what the
kernel says the program holds (capability sets, bounding set, securebits,
no_new_privs), as root and as an ordinary uid."""

from __future__ import annotations

import os

import prctl

from tests.sandbox.sandbox_util import PY, default_profile, run, with_binds
from warden.profiles.model import Bind

SITE = os.path.dirname(os.path.realpath(prctl.__file__))  # prctl.py and _prctl.*.so

PROBE = """
import json, sys
sys.path.insert(0, %r)
import prctl
caps = lambda s: [c for c in prctl.ALL_CAP_NAMES if getattr(s, c)]
bits = ("noroot", "noroot_locked", "no_setuid_fixup", "no_setuid_fixup_locked",
        "keep_caps", "keep_caps_locked")
print(json.dumps({
    "bounding": caps(prctl.capbset), "effective": caps(prctl.cap_effective),
    "permitted": caps(prctl.cap_permitted), "inheritable": caps(prctl.cap_inheritable),
    "no_new_privs": prctl.get_no_new_privs(), "dumpable": prctl.get_dumpable(),
    "securebits": {b: getattr(prctl.securebits, b) for b in bits},
}))
"""


def test_the_program_holds_no_capability_and_cannot_regain_one() -> None:
    profile = with_binds(default_profile(), Bind(SITE, SITE, writable=False))
    r = run([PY, "-I", "-S", "-c", PROBE % SITE], profile)
    assert r.status.exit_code == 0, (r.status, r.err)
    got = r.json()
    assert got["effective"] == got["permitted"] == got["inheritable"] == []
    assert got["bounding"] == []  # nothing to gain even through a file capability
    assert got["no_new_privs"] == 1
    # No set-uid fixup, no root special case, and both locked: an exec of a
    # set-uid or root-owned program cannot hand capabilities back.
    sb = got["securebits"]
    assert sb["noroot"] and sb["noroot_locked"]
    assert sb["no_setuid_fixup"] and sb["no_setuid_fixup_locked"]
    assert not sb["keep_caps"] and sb["keep_caps_locked"]
    # Whatever the sandbox is, this process on the host still has its own.
    assert os.geteuid() != 0 or prctl.cap_effective.sys_admin
