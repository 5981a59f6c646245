"""The spec and the status record, without forking: parsing, merging, the JSON shape."""

from __future__ import annotations

import json

import pytest

from tests.sandbox.sandbox_util import PERMISSIVE, TEST_PROFILE
from warden.profiles.model import Bind, Environment, Filesystem, Limits, Namespaces, Profile
from warden.supervisor.sandbox import Outcome, SpecError, Status, Violation, build_spec
from warden.supervisor.sandbox.spec import DEFAULT_OPEN_FILES, parse_size


@pytest.mark.parametrize(("text", "value"), [("65536", 65536), ("512M", 512 << 20),
                                             ("2G", 2 << 30), ("1k", 1024), ("3MiB", 3 << 20)])
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text, "--memory") == value


def test_bad_size_names_the_option() -> None:
    with pytest.raises(SpecError, match=r"^--tmp-size '12Q': expected a size such as 512M, 2G "
                                        r"or 65536$"):
        parse_size("12Q", "--tmp-size")


def test_options_override_the_profile_and_builtin_caps_fill_the_rest() -> None:
    prof = Profile(name="p", source="<t>", limits=Limits(memory_bytes=1 << 30, processes=10),
                   environment=Environment(set=(("A", "profile"),)),
                   filesystem=Filesystem(binds=(Bind("/usr", "/usr"),), chdir="/usr"))
    spec = build_spec(["/bin/true"], prof, seccomp_filter=PERMISSIVE, memory=64 << 20,
                      memory_rlimit_only=True, env=["B=cli"], source_env={})
    assert (spec.memory_bytes, spec.processes, spec.open_files) == (64 << 20, 10,
                                                                   DEFAULT_OPEN_FILES)
    env = dict(spec.env)
    assert (env["A"], env["B"], env["HOME"]) == ("profile", "cli", "/tmp")
    assert spec.chdir == "/usr" and spec.notify is True
    with pytest.raises(AttributeError):
        spec.memory_bytes = 1  # type: ignore[misc]  # frozen


def test_only_the_network_namespace_may_be_shared() -> None:
    shared = Profile(name="n", source="<t>", namespaces=Namespaces(net=False))
    assert build_spec(["/bin/true"], shared, seccomp_filter=PERMISSIVE).share_net
    no_pid = Profile(name="x", source="<t>", namespaces=Namespaces(pid=False))
    with pytest.raises(SpecError, match=r"^profile x: namespaces.pid = false is not supported; "
                                        r"only the network namespace can be shared$"):
        build_spec(["/bin/true"], no_pid, seccomp_filter=PERMISSIVE)


def test_a_filter_the_kernel_would_refuse_fails_before_fork() -> None:
    with pytest.raises(SpecError, match="not a whole number of 8-byte BPF instructions"):
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=b"\0" * 12)
    with pytest.raises(SpecError, match=r"4097 instructions \(the kernel takes at most 4096\)"):
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=b"\6\0\0\0\0\0\xff\x7f" * 4097)


def test_missing_optional_binds_are_skipped_and_required_ones_named() -> None:
    prof = Profile(name="b", source="<t>", filesystem=Filesystem(binds=(
        Bind("/nonexistent-a", "/a", optional=True), Bind("/nonexistent-b", "/b"))))
    with pytest.raises(SpecError, match=r"^profile b bind /nonexistent-b: source "
                                        r"/nonexistent-b does not exist$"):
        build_spec(["/bin/true"], prof, seccomp_filter=PERMISSIVE)


def test_status_json_shape() -> None:
    st = Status(outcome=Outcome.SECCOMP_VIOLATION, exit_code=159, signal=9,
                reason="seccomp refused mkdir",
                violation=Violation("mkdir", 83, "x86_64", (1, 2, 3, 4, 5, 6), 4242),
                wall_time=0.5, cpu_time=0.1, peak_memory_bytes=4096,
                limits_mechanism="rlimit", landlock_abi=6)
    d = json.loads(st.to_json())
    assert d["outcome"] == "seccomp_violation" and d["signal_name"] == "SIGKILL"
    assert d["violation"] == {"syscall": "mkdir", "nr": 83, "arch": "x86_64",
                              "args": [1, 2, 3, 4, 5, 6], "pid": 4242, "path": None}
    assert {"wall_time", "cpu_time", "peak_memory_bytes", "limits_mechanism", "landlock_abi",
            "exit_code", "returncode", "setup", "reason", "weakened", "complaints"} <= set(d)
    assert st.describe() == ("seccomp violation: mkdir(0x1, 0x2, 0x3, 0x4, 0x5, 0x6); "
                             "sandbox killed")


def test_a_filter_that_refuses_execve_is_refused_before_fork() -> None:
    from tests.sandbox.sandbox_util import filter_notifying

    with pytest.raises(SpecError, match=r"^profile test: its seccomp filter refuses execve"):
        build_spec(["/bin/true"], TEST_PROFILE, seccomp_filter=filter_notifying("execve"))
