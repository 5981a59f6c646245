"""Finding profiles, stacking extends/includes, and the precedence of rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warden.profiles import ProfileError, load_profile
from warden.profiles.loader import PATH_VAR
from warden.profiles.model import ALLOW, Action, ActionKind, ArgOp, Profile

EPERM = Action(ActionKind.ERRNO, 1)
EACCES = Action(ActionKind.ERRNO, 13)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def uncond(profile: Profile, call: str) -> Action | None:
    rules = [r for r in profile.seccomp.rules if r.syscall == call and not r.conditions]
    return rules[-1].action if rules else None


def test_deny_beats_allow_at_equal_explicitness(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", '[seccomp]\nallow = ["@process"]\ndeny = ["unshare"]\n')
    prof = load_profile(str(p))
    assert uncond(prof, "unshare") == EPERM
    assert uncond(prof, "clone") == ALLOW


def test_a_named_call_beats_a_group(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", '[seccomp]\nallow = ["fstat"]\ndeny = ["@file-system"]\n'
              'deny-action = "errno EACCES"\n')
    prof = load_profile(str(p))
    assert uncond(prof, "fstat") == ALLOW
    assert uncond(prof, "openat") == EACCES


def test_rules_beat_lists_and_conflicting_rules_are_rejected(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", '[seccomp]\ndeny = ["ptrace"]\n[[seccomp.rules]]\n'
              'syscall = "ptrace"\naction = "kill-process"\n')
    assert uncond(load_profile(str(p)), "ptrace") == Action(ActionKind.KILL_PROCESS)
    q = write(tmp_path / "q.toml", '[[seccomp.rules]]\nsyscall = "ptrace"\naction = "allow"\n'
              '[[seccomp.rules]]\nsyscall = "ptrace"\naction = "trap"\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(q))
    assert str(info.value).startswith(
        f'{q}:5:11: error: conflicting rules for "ptrace": trap here, allow at {q}:2:11')


def test_extends_overrides_unconditional_and_accumulates_conditional(tmp_path: Path) -> None:
    write(tmp_path / "base.toml", '[seccomp]\nallow = ["read", "ptrace"]\n[[seccomp.rules]]\n'
          'syscall = "socket"\naction = "allow"\nargs = ["arg0 & U32_MAX == AF_UNIX"]\n')
    child = write(tmp_path / "child.toml", 'extends = "./base.toml"\n[seccomp]\ndeny = ["ptrace"]\n'
                  '[[seccomp.rules]]\nsyscall = "socket"\naction = "allow"\n'
                  'args = ["arg0 & U32_MAX == AF_INET"]\n')
    prof = load_profile(str(child))
    assert uncond(prof, "ptrace") == EPERM
    assert uncond(prof, "read") == ALLOW
    sockets = sorted(r.conditions[0].value for r in prof.seccomp.rules if r.syscall == "socket")
    assert sockets == [1, 2]
    read = next(r for r in prof.seccomp.rules if r.syscall == "read")
    assert read.origin is not None and read.origin.via == ("extends ./base.toml",)


def test_reset_drops_inherited_rules(tmp_path: Path) -> None:
    child = write(tmp_path / "c.toml", 'extends = "default"\n[seccomp]\n'
                  'reset = ["socket", "ioctl"]\nallow = ["ioctl"]\n')
    prof = load_profile(str(child))
    assert not [r for r in prof.seccomp.rules if r.syscall == "socket"]
    assert [(r.action, r.conditions) for r in prof.seccomp.rules if r.syscall == "ioctl"] == [
        (ALLOW, ())]


def test_includes_merge_in_order_and_report_their_chain(tmp_path: Path) -> None:
    write(tmp_path / "frag" / "bad.toml", '[seccomp]\nallow = ["getpidd"]\n')
    write(tmp_path / "frag" / "mid.toml", 'include = ["bad.toml"]\n')
    top = write(tmp_path / "top.toml", 'description = "t"\ninclude = ["frag/mid.toml"]\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(top))
    e = info.value
    assert e.file.endswith("frag/bad.toml") and (e.line, e.column) == (2, 11)
    assert e.message == 'unknown system call "getpidd" (did you mean "getpid"?)'
    assert [c.rsplit("/", 1)[-1] for c in e.include_chain] == ["mid.toml:1:12", "top.toml:2:12"]
    text = str(e).splitlines()
    assert text[-2].startswith("  included from ") and text[-2].endswith("frag/mid.toml:1:12")
    assert text[-1].endswith("top.toml:2:12")


def test_include_cycle_is_reported_with_the_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'include = ["b.toml"]\n')
    write(tmp_path / "b.toml", 'include = ["a.toml"]\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(tmp_path / "a.toml"))
    e = info.value
    assert e.message.startswith("include cycle: ")
    names = [part.rsplit("/", 1)[-1] for part in e.message.removeprefix("include cycle: ")
             .split(" -> ")]
    assert names == ["a.toml", "b.toml", "a.toml"]
    assert e.file.endswith("b.toml") and (e.line, e.column) == (1, 12)


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'extends = "./a.toml"\n')
    with pytest.raises(ProfileError, match=r"extends cycle: .*a\.toml -> .*a\.toml"):
        load_profile(str(tmp_path / "a.toml"))


def test_unknown_parent_suggests_a_name(tmp_path: Path) -> None:
    p = write(tmp_path / "p.toml", 'extends = "defualt"\n')
    with pytest.raises(ProfileError) as info:
        load_profile(str(p))
    assert info.value.message == 'no profile named "defualt" (did you mean "default"?)'
    assert (info.value.line, info.value.column) == (1, 11)


def test_search_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$WARDEN_PROFILE_PATH, then $XDG_CONFIG_HOME; ./profiles only when named."""
    xdg = tmp_path / "xdg"
    write(xdg / "warden" / "profiles" / "mine.toml", 'description = "from xdg"\n')
    work = tmp_path / "work"
    write(work / "profiles" / "mine.toml", 'description = "from cwd"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.delenv(PATH_VAR, raising=False)
    monkeypatch.chdir(work)
    assert load_profile("mine").description == "from xdg"
    monkeypatch.setenv(PATH_VAR, "./profiles")
    assert load_profile("mine").description == "from cwd"
    monkeypatch.delenv(PATH_VAR)
    assert load_profile("./profiles/mine.toml").description == "from cwd"
    os.remove(xdg / "warden" / "profiles" / "mine.toml")
    with pytest.raises(ProfileError, match='no profile named "mine"'):
        load_profile("mine")
    write(tmp_path / "only" / "mine.toml", 'description = "explicit"\n')
    assert load_profile("mine", search_path=[tmp_path / "only"]).description == "explicit"
    strict = load_profile("strict", search_path=[tmp_path])
    assert strict.source.endswith("profiles/builtin/strict.toml")
    with pytest.raises(ProfileError, match='no profile named "nope"'):
        load_profile("nope", search_path=[tmp_path])


@pytest.mark.parametrize("where", ["cwd", "cwd-opted-in", "xdg", "search_path"])
@pytest.mark.parametrize("name", ["default", "strict"])
def test_a_builtin_name_is_always_the_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              where: str, name: str) -> None:
    """A same-named file never replaces a built-in: in ./profiles it is not even looked
    at; on a path the user set up it is refused, naming the file and the fix."""
    allow_all = '[seccomp]\ndefault-action = "allow"\n'
    work, xdg = tmp_path / "work", tmp_path / "xdg"
    monkeypatch.chdir(write(work / "profiles" / f"{name}.toml", allow_all).parent.parent)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.delenv(PATH_VAR, raising=False)
    search = None
    shadow = None
    if where == "cwd-opted-in":
        monkeypatch.setenv(PATH_VAR, "profiles")
        shadow = Path("profiles") / f"{name}.toml"
    elif where == "xdg":
        shadow = write(xdg / "warden" / "profiles" / f"{name}.toml", allow_all)
    elif where == "search_path":
        shadow = write(tmp_path / "mine" / f"{name}.toml", allow_all)
        search = [tmp_path / "mine"]
    if shadow is None:
        prof = load_profile(name, search_path=search)
        assert prof.source.endswith(f"profiles/builtin/{name}.toml") and prof.source.startswith("/")
        assert prof.seccomp.default_action.kind is not ActionKind.ALLOW
        return
    with pytest.raises(ProfileError) as info:
        load_profile(name, search_path=search)
    assert str(info.value) == (
        f'{shadow}: error: this file has the name of the built-in profile "{name}", and a '
        f'built-in name always means the built-in; rename it (for example to "my-{name}.toml") '
        "and use that name, or pass its path")
    # The same file, asked for by its path, is what the user gets.
    assert load_profile(str(shadow)).seccomp.default_action.kind is ActionKind.ALLOW


def test_extends_of_a_builtin_name_is_the_builtin(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`extends = "default"` next to a planted default.toml still means the built-in."""
    write(tmp_path / "profiles" / "default.toml", '[seccomp]\ndefault-action = "allow"\n')
    mine = write(tmp_path / "profiles" / "mine.toml", 'extends = "default"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PATH_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    prof = load_profile(str(mine))
    assert prof.seccomp.default_action == load_profile("default").seccomp.default_action
    assert {r.syscall for r in prof.seccomp.rules} == \
        {r.syscall for r in load_profile("default").seccomp.rules}


def test_builtins_flatten_with_origins() -> None:
    prof = load_profile("network-client")
    assert prof.namespaces.net is False and prof.namespaces.user is True
    getppid = next(r for r in prof.seccomp.rules if r.syscall == "getppid")
    assert getppid.origin is not None
    assert getppid.origin.via == ("extends default", "@default")
    assert getppid.origin.file.endswith("default.toml")
    clone = [r for r in prof.seccomp.rules if r.syscall == "clone" and r.conditions]
    assert {r.conditions[0].op for r in clone} == {ArgOp.MASKED_EQ}
    dests = [b.dest for b in prof.filesystem.binds]
    assert dests.index("/etc/ssl") < dests.index("/etc/ssl/certs")
    assert "/usr" in dests and prof.environment.keep == ("LANG", "LC_ALL", "TERM")


def test_absent_sections_are_the_safe_defaults(tmp_path: Path) -> None:
    prof = load_profile(str(write(tmp_path / "empty.toml", "")))
    assert prof.seccomp.rules == ()
    assert prof.seccomp.default_action.kind is ActionKind.KILL_PROCESS
    assert prof.seccomp.bad_arch_action.kind is ActionKind.KILL_PROCESS
    ns = prof.namespaces
    assert all((ns.user, ns.pid, ns.mount, ns.net, ns.ipc, ns.uts, ns.cgroup))
    assert prof.filesystem.binds == () and prof.environment.set == ()
    assert prof.environment.keep == ()


def test_missing_file_and_bad_name() -> None:
    with pytest.raises(ProfileError, match=r'no such profile file "nowhere/x\.toml"'):
        load_profile("nowhere/x.toml")
    with pytest.raises(ProfileError, match="is not a profile name"):
        load_profile("bad name")


def test_the_checkouts_profiles_folder_is_only_a_user_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-ins are the installed package's builtin/, never ./profiles: in a
    checkout, ./profiles holds the source, and its builtin/ copies are a user path
    like any other (so a same-named file there is refused, not taken)."""
    import warden.profiles
    from warden.profiles.loader import BUILTIN_DIR

    root = Path(__file__).resolve().parents[2]
    installed = Path(warden.profiles.__file__).resolve().parent
    assert (installed / "builtin", installed != root / "profiles") == (BUILTIN_DIR, True)
    monkeypatch.chdir(root)
    monkeypatch.delenv(PATH_VAR, raising=False)
    with pytest.raises(ProfileError, match=r'no such profile file "\./profiles/default\.toml"'):
        load_profile("./profiles/default.toml")
    monkeypatch.setenv(PATH_VAR, "profiles/builtin")
    with pytest.raises(ProfileError, match='has the name of the built-in profile "default"'):
        load_profile("default")
