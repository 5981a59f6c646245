"""`warden profile ...` through click's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.interpreter import PYTHON, python_env
from warden.profiles import ProfileError, bpf, compiler, load_profile, oci
from warden.profiles.cli import profile_group

ROOT = Path(__file__).resolve().parents[2]
DOCKER = Path(__file__).with_name("docker-default-seccomp.json")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(profile_group, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_list() -> None:
    code, out, _ = run("list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert {"default", "strict", "python-worker", "network-client"} <= set(names)
    code, out, _ = run("list", "--json")
    rows = json.loads(out)
    assert any(r["name"] == "default" and r["description"] for r in rows)


def test_show_names_origins() -> None:
    code, out, _ = run("show", "network-client")
    assert code == 0
    assert "default kill-process, foreign arches kill-process" in out
    line = next(li for li in out.splitlines() if li.strip().startswith("getppid "))
    assert "allow" in line and "default.toml" in line and "via extends default, @default" in line
    assert "net: False" in out
    data = json.loads(run("show", "default", "--json")[1])
    socket_rules = [r for r in data["seccomp"]["rules"] if r["syscall"] == "socket"]
    assert {r["action"] for r in socket_rules} == {"allow", "errno EPERM"}
    assert data["seccomp"]["instructions"] > 0


def test_check_good_and_bad(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[seccomp]\nallow = ["read", "wirte"]\n')
    code, out, err = run("check", str(ROOT / "profiles" / "builtin" / "default.toml"), str(bad))
    assert code == 1
    assert "default.toml: ok (" in out
    assert err.startswith(f'{bad}:2:19: error: unknown system call "wirte" (did you mean "write"?)')
    code, out, _ = run("check", "--json", str(bad))
    assert code == 1
    assert json.loads(out)[0]["line"] == 2


def test_compile_writes_loadable_bpf(tmp_path: Path) -> None:
    target = tmp_path / "default.bpf"
    code, out, _ = run("compile", "default", "-o", str(target))
    assert code == 0 and "instructions" in out
    assert target.read_bytes() == compiler.compile_policy(load_profile("default").seccomp)
    run("compile", "default", "-o", str(target), "--kill-as-notify")
    assert bpf.describe(bpf.evaluate(target.read_bytes(), 279)) == "user-notify"  # move_pages


@pytest.mark.parametrize(
    ("args", "first", "decided"),
    [
        (["default", "socket", "AF_PACKET"], "socket(0x11) [x86_64] under default: errno EPERM",
         "decided by: socket errno EPERM"),
        (["default", "socket", "AF_UNIX", "SOCK_STREAM|SOCK_CLOEXEC"],
         "socket(0x1, 0x80001) [x86_64] under default: allow",
         "decided by: socket allow if arg0 & 0xffffffff == 0x1"),
        (["default", "ioctl", "0", "TIOCSTI"],
         "ioctl(0x0, 0x5412) [x86_64] under default: errno EPERM",
         "if arg1 & 0xffffffff == 0x5412"),
        (["default", "clone", "CLONE_NEWUSER"],
         "clone(0x10000000) [x86_64] under default: errno EPERM",
         "if arg0 & 0x10000000 == 0x10000000"),
        (["default", "mount"], "mount() [x86_64] under default: errno EPERM", "(via @mount)"),
        (["default", "move_pages", "0"], "move_pages(0x0) [x86_64] under default: kill-process",
         "decided by: default action"),
        (["default", "read", "--arch", "x32"], "read() [x32] under default: kill-process",
         "foreign architecture x32"),
        (["strict", "39"], "getpid() [x86_64] under strict: allow", "decided by: getpid allow"),
    ],
)
def test_explain(args: list[str], first: str, decided: str) -> None:
    code, out, _ = run("explain", *args)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == first
    assert decided in lines[1]


def test_explain_json_and_errors() -> None:
    data = json.loads(run("explain", "default", "clone3", "--json")[1])
    assert data["result"] == "errno ENOSYS"
    lines = (ROOT / "profiles" / "builtin" / "default.toml").read_text().splitlines()
    line = lines.index('syscall = "clone3"') + 1
    assert data["decided_by"][0]["origin"].endswith(f"default.toml:{line}:11")
    code, _, err = run("explain", "default", "sockte")
    assert code == 1 and 'unknown system call "sockte" (did you mean "socket"?)' in err
    code, _, err = run("explain", "default", "socket", "AF_INTE")
    assert code == 1 and 'unknown constant "AF_INTE" (did you mean "AF_INET"?)' in err


def test_diff() -> None:
    code, out, _ = run("diff", "default", "network-client")
    assert code == 0
    assert "+ filesystem.binds: {'source': '/etc/ssl'" in out
    assert "~ namespaces.net: True -> False" in out
    code, out, _ = run("diff", "default", "strict")
    assert code == 0 and "- socket allow if arg0 & 0xffffffff == 0x2" in out
    data = json.loads(run("diff", "default", "default", "--json")[1])
    assert data["added"] == data["removed"] == data["settings"] == []
    assert run("diff", "strict", "strict")[1] == "no differences\n"


def test_new_writes_a_valid_commented_starter(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run("new", "mine", "--from", "default")
    assert code == 0 and "wrote profiles/mine.toml" in out
    text = (tmp_path / "profiles" / "mine.toml").read_text()
    assert 'extends = "default"' in text and "# [[seccomp.rules]]" in text
    assert "warden run -p profiles/mine.toml" in out
    # The working directory is not searched by name: the file is used by its path.
    with pytest.raises(ProfileError, match='no profile named "mine"'):
        load_profile("mine")
    prof = load_profile("profiles/mine.toml")

    def meaning(name: str) -> list[object]:
        return [(r.syscall, r.action, r.conditions) for r in load_profile(name).seccomp.rules]

    assert meaning("profiles/mine.toml") == meaning("default")
    assert prof.description == "Describe what runs under this profile"
    code, _, err = run("new", "mine")
    assert code == 1 and "already exists" in err
    code, _, err = run("new", "other", "--from", "nosuch")
    assert code == 1 and 'no profile named "nosuch"' in err


def test_import_and_export(tmp_path: Path) -> None:
    out_toml = tmp_path / "docker.toml"
    code, _, err = run("import", str(DOCKER), "-o", str(out_toml))
    assert code == 0 and "note: syscalls[17]" in err
    assert run("check", str(out_toml))[0] == 0
    code, out, _ = run("export", str(out_toml), "--format", "oci")
    assert code == 0
    again = oci.load_oci(out, "x.json").policy
    assert {(r.syscall, r.action, r.conditions) for r in again.rules} == {
        (r.syscall, r.action, r.conditions) for r in load_profile(str(out_toml)).seccomp.rules}
    code, out, _ = run("export", "strict", "--format", "pfc")
    assert code == 0 and "pseudo filter code start" in out
    target = tmp_path / "s.bpf"
    assert run("export", "strict", "--format", "bpf", "-o", str(target))[0] == 0
    assert target.read_bytes() == compiler.compile_policy(load_profile("strict").seccomp)


def test_bad_json_import_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ERRNO",\n "syscalls": [\n')
    code, _, err = run("import", str(bad))
    assert code == 1 and err.startswith(f"{bad}:3:1: error: invalid JSON")


def test_real_subprocess_and_bwrap_accepts_the_bpf(tmp_path: Path) -> None:
    env = python_env(str(ROOT))
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "default"\n[seccomp]\ndeny = ["@mountt"]\n')
    proc = subprocess.run([PYTHON, "-m", "warden", "profile", "check", str(bad)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        'bad.toml:3:10: error: unknown group "@mountt" (did you mean "@mount"?)',
        '    deny = ["@mountt"]',
        "             ^",
    ]
    target = tmp_path / "default.bpf"
    proc = subprocess.run([PYTHON, "-m", "warden", "profile", "compile", "default",
                           "-o", str(target)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    bwrap = "/usr/bin/bwrap"
    if not os.path.exists(bwrap):
        pytest.skip("bubblewrap is not installed")
    with open(target, "rb") as f:
        proc = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-all", "--seccomp",
             str(f.fileno()), "/bin/sh", "-c", "echo inside; unshare -U true; echo $?"],
            pass_fds=[f.fileno()], capture_output=True, text=True)
    if not proc.stdout.startswith("inside") and "seccomp" not in proc.stderr:
        pytest.skip(f"bwrap cannot create a sandbox here: {proc.stderr.strip()}")
    assert proc.stdout.splitlines()[0] == "inside"
    assert proc.stdout.splitlines()[-1] != "0"  # unshare refused by the filter


def test_list_shows_user_profiles_and_refuses_builtin_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "xdg" / "warden" / "profiles"
    user.mkdir(parents=True)
    (user / "default.toml").write_text('description = "my own default"\n')
    (user / "broken.toml").write_text('[seccomp]\nallow = ["nope"]\n')
    (user / "mine.toml").write_text('description = "mine"\n')
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "cwd-only.toml").write_text('description = "not searched"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    code, out, _ = run("list")
    assert code == 0
    lines: dict[str, list[str]] = {}
    for line in out.splitlines():
        lines.setdefault(line.split()[0], []).append(line)
    assert "cwd-only" not in lines
    assert lines["mine"] == [f"mine            mine ({user / 'mine.toml'})"]
    assert 'unknown system call "nope"' in lines["broken"][0]
    builtin, mine = lines["default"]
    assert builtin.endswith("(built-in)")
    assert "has the name of the built-in profile" in mine and "rename" in mine
    rows = json.loads(run("list", "--json")[1])
    defaults = [r for r in rows if r["name"] == "default"]
    assert [r["builtin"] for r in defaults] == [True, False] and "error" in defaults[1]


def test_new_refuses_a_builtin_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("new", "strict")
    assert code == 1 and '"strict" is the name of a built-in profile' in err
    assert not (tmp_path / "profiles").exists()
