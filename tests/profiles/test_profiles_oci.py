"""OCI / Docker seccomp JSON: import, run, export, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pyseccomp
import pytest

from tests.profiles.profiles_child import exec_under
from warden.profiles import ProfileError, bpf, compiler, load_profile, load_text, oci, syscalls
from warden.profiles.model import ActionKind, ArgOp, SeccompPolicy

# Docker/moby's default profile (moby/profiles seccomp/default.json, Apache-2.0).
DOCKER = Path(__file__).with_name("docker-default-seccomp.json")


def rule_set(policy: SeccompPolicy) -> set[tuple[str, str, tuple[object, ...]]]:
    return {(r.syscall, str(r.action), r.conditions) for r in policy.rules}


@pytest.fixture(scope="module")
def docker() -> oci.Imported:
    return oci.load_oci(DOCKER.read_text(), str(DOCKER))


def test_docker_default_imports(docker: oci.Imported) -> None:
    pol = docker.policy
    assert pol.default_action.kind is ActionKind.ERRNO and pol.default_action.errno == 1
    calls = {r.syscall for r in pol.rules}
    assert {"read", "execve", "socket", "clone", "clone3"} <= calls
    # capability-only rules are out: warden grants no capability
    assert not {"mount", "bpf", "reboot", "chroot", "unshare"} & calls
    assert "ptrace" in calls  # Docker allows it from kernel 4.8 on (includes.minKernel)
    assert any("CAP_SYS_ADMIN" in n for n in docker.notes)
    clone3 = [r for r in pol.rules if r.syscall == "clone3"]
    assert [str(r.action) for r in clone3] == ["errno 38"]
    clone = next(r for r in pol.rules if r.syscall == "clone")
    assert clone.conditions[0].op is ArgOp.MASKED_EQ and clone.conditions[0].mask == 0x7E020000
    personality = sorted(r.conditions[0].value for r in pol.rules if r.syscall == "personality")
    assert personality == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def test_docker_default_runs_sh_in_a_child(docker: oci.Imported) -> None:
    code = compiler.compile_policy(docker.policy)
    result = exec_under(code, ["/bin/sh", "-c", "echo ok"])
    assert (result.exit_code, result.output) == (0, b"ok\n")
    # and what Docker refuses, it refuses: mount answers EPERM (the default)
    assert bpf.describe(bpf.evaluate(code, syscalls.number("mount") or 0)) == "errno EPERM"


def test_docker_round_trips_through_export(docker: oci.Imported) -> None:
    again = oci.load_oci(oci.dump_oci(docker.policy), "exported.json")
    assert rule_set(again.policy) == rule_set(docker.policy)
    assert again.policy.default_action == docker.policy.default_action
    assert again.notes == []


def test_import_as_toml_round_trips(docker: oci.Imported) -> None:
    text = oci.to_toml(docker, str(DOCKER))
    assert rule_set(load_text(text).seccomp) == rule_set(docker.policy)


@pytest.mark.parametrize("name", ["default", "strict", "python-worker", "network-client"])
def test_builtins_round_trip_through_oci(name: str) -> None:
    pol = load_profile(name).seccomp
    again = oci.load_oci(oci.dump_oci(pol), "x.json").policy
    assert rule_set(again) == rule_set(pol)
    assert compiler.compile_policy(again) == compiler.compile_policy(pol)


def _runc_like(doc: dict[str, object]) -> bytes:
    """Compile OCI JSON the way runc does: each entry straight into libseccomp."""
    default = doc["defaultAction"]
    assert default == "SCMP_ACT_KILL_PROCESS"
    filt = pyseccomp.SyscallFilter(pyseccomp.KILL_PROCESS)
    ops = {"SCMP_CMP_EQ": pyseccomp.EQ, "SCMP_CMP_GE": pyseccomp.GE, "SCMP_CMP_NE": pyseccomp.NE,
           "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ}
    for entry in doc["syscalls"]:  # type: ignore[attr-defined]
        action = {"SCMP_ACT_ALLOW": pyseccomp.ALLOW,
                  "SCMP_ACT_ERRNO": pyseccomp.ERRNO(entry.get("errnoRet", 1))}[entry["action"]]
        args = [pyseccomp.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0))
                for a in entry.get("args", [])]
        for name in entry["names"]:
            filt.add_rule(action, name, *args)
    import os

    r, w = os.pipe()
    with os.fdopen(w, "wb") as f:
        filt.export_bpf(f)
    with os.fdopen(r, "rb") as f:
        return f.read()


def test_export_keeps_exceptions_when_runc_compiles_it() -> None:
    """runc hands rules straight to libseccomp, which drops conditional rules
    beside an unconditional one; export's `>= 0` form keeps TIOCSTI refused."""
    code = _runc_like(json.loads(oci.dump_oci(load_profile("default").seccomp)))
    ioctl = syscalls.number("ioctl") or 0
    socket = syscalls.number("socket") or 0
    assert bpf.describe(bpf.evaluate(code, ioctl, [0, 0x5412])) == "errno EPERM"
    assert bpf.describe(bpf.evaluate(code, ioctl, [0, 0x5413])) == "allow"
    assert bpf.describe(bpf.evaluate(code, socket, [17])) == "errno EPERM"  # AF_PACKET
    assert bpf.describe(bpf.evaluate(code, socket, [1])) == "allow"
    assert bpf.describe(bpf.evaluate(code, socket, [2])) == "allow"
    assert bpf.describe(bpf.evaluate(code, socket, [16, 3, 0])) == "allow"  # route netlink
    assert bpf.describe(bpf.evaluate(code, socket, [16, 3, 15])) == "errno EPERM"  # uevents


def test_bad_json_points_at_the_line() -> None:
    with pytest.raises(ProfileError) as info:
        oci.load_oci('{\n  "defaultAction": "SCMP_ACT_ERRNO",\n  oops\n}', "bad.json")
    assert (info.value.file, info.value.line, info.value.column) == ("bad.json", 3, 3)
    with pytest.raises(ProfileError, match="unsupported action 'SCMP_ACT_TRACE'"):
        oci.load_oci('{"defaultAction": "SCMP_ACT_TRACE"}', "t.json")
    with pytest.raises(ProfileError, match="not an OCI seccomp profile"):
        oci.load_oci("[]", "t.json")
