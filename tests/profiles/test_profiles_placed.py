"""filesystem.symlinks, dirs and data-files: links, directories and inline read-only
files a profile places in the sandbox, as `--symlink`, `--dir` and `--ro-bind-data`
do. Parsed, merged through extends and include, refused with file:line:column,
shown, and (end to end) checked, then run: what check accepts, run places."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.interpreter import PYTHON, python_env
from warden.profiles import ProfileError, load_profile
from warden.profiles.cli import profile_group
from warden.profiles.model import MAX_DATA_FILE_BYTES, DataFile, Symlink

PLACED = """\
extends = "default"

[filesystem]
symlinks = [{ dest = "/opt/app/python", target = "/usr/bin/python3" },
            { dest = "/opt/app/conf", target = "../../etc/app.conf" }]
dirs = ["/work", { dest = "/var/cache/app/" }]
data-files = [{ dest = "/etc/app.conf", contents = "mode = fast\\n" }]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_profile(str(write(tmp_path, "x.toml", text)))
    return info.value


def test_the_keys_parse_into_the_model(tmp_path: Path) -> None:
    fs = load_profile(str(write(tmp_path, "p.toml", PLACED))).filesystem
    assert fs.symlinks == (Symlink("/opt/app/python", "/usr/bin/python3"),
                           Symlink("/opt/app/conf", "../../etc/app.conf"))
    assert fs.dirs == ("/work", "/var/cache/app")  # destinations as the sandbox compares them
    assert fs.data_files == (DataFile("/etc/app.conf", "mode = fast\n"),)
    assert any(b.dest == "/usr" for b in fs.binds)  # the parent's binds stay


@pytest.mark.parametrize(("text", "where", "message"), [
    ('dirs = ["work"]', "2:9", 'path "work" must be absolute'),
    ('dirs = ["/a/../etc"]', "2:9", 'destination /a/../etc must not contain ".."'),
    ('dirs = ["/proc/sys"]', "2:9", "destination /proc/sys is reserved (the sandbox mounts "
     "its own /proc)"),
    ('symlinks = [{ dest = "/dev/x", target = "/y" }]', "2:22",
     "destination /dev/x is reserved"),
    ('dirs = ["/"]', "2:9", "the sandbox root / cannot be replaced"),
    ('dirs = ["/tmp"]', "2:9", "destination /tmp is already used by the built-in /tmp"),
    ('ro = ["/usr"]\ndata-files = [{ dest = "/usr/", contents = "" }]', "3:24",
     "destination /usr is already used by filesystem.ro[0] (line 2)"),
    ('dirs = ["/a"]\nsymlinks = [{ dest = "/a", target = "/b" }]', "3:22",
     "destination /a is already used by filesystem.dirs[0] (line 2)"),
    ('symlinks = [{ dest = "/a" }]', "2:13", 'filesystem.symlinks[0] has no "target"'),
    ('symlinks = [{ dest = "/a", target = "" }]', "2:37", "a link target must be a "
     "non-empty path"),
    ('data-files = [{ dest = "/a", contents = 1 }]', "2:41",
     '"filesystem.data-files[0].contents" must be a string'),
    ('data-files = [{ dest = "/a", text = "x" }]', "2:30", 'unknown key "text" in '
     '[filesystem.data-files[0]]'),
    ('dirs = "/a"', "2:8", '"filesystem.dirs" must be a list'),
])
def test_mistakes_name_the_file_line_and_key(tmp_path: Path, text: str, where: str,
                                             message: str) -> None:
    e = error_of(tmp_path, f"[filesystem]\n{text}\n")
    assert f"{Path(e.file).name}:{e.line}:{e.column}" == f"x.toml:{where}", str(e)
    assert e.message.startswith(message), str(e)


def test_contents_are_bounded(tmp_path: Path) -> None:
    ok = "x" * MAX_DATA_FILE_BYTES
    fs = load_profile(str(write(tmp_path, "ok.toml", f'[filesystem]\ndata-files = [{{ dest = '
                                                    f'"/big", contents = "{ok}" }}]\n')))
    assert len(fs.filesystem.data_files[0].contents) == MAX_DATA_FILE_BYTES == 1 << 20
    e = error_of(tmp_path, f'[filesystem]\ndata-files = [{{ dest = "/big", contents = '
                           f'"{ok}é" }}]\n')
    assert (e.line, e.column) == (2, 43)
    assert e.message == (f"an inline data file holds at most 1M (1048576 bytes), this one "
                         f"{MAX_DATA_FILE_BYTES + 2}; bind a host file with filesystem.ro "
                         "instead")


def test_extends_and_include_merge_by_destination(tmp_path: Path) -> None:
    write(tmp_path, "base.toml", PLACED)
    write(tmp_path, "frag.toml", '[filesystem]\ndirs = ["/frag"]\n'
                                 'symlinks = [{ dest = "/work", target = "/tmp" }]\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\ninclude = ["frag"]\n'
                  "[filesystem]\n"
                  'data-files = [{ dest = "/etc/app.conf", contents = "mode = slow\\n" }]\n'
                  'dirs = ["/opt/app/python"]\n')
    fs = load_profile(str(child)).filesystem
    # The include's link replaced the parent's directory /work; the child's directory
    # the parent's link /opt/app/python; the child's file the parent's file.
    assert set(fs.symlinks) == {Symlink("/opt/app/conf", "../../etc/app.conf"),
                                Symlink("/work", "/tmp")}
    assert set(fs.dirs) == {"/var/cache/app", "/frag", "/opt/app/python"}
    assert fs.data_files == (DataFile("/etc/app.conf", "mode = slow\n"),)


def test_a_link_where_another_layer_binds_is_an_error_at_the_link(tmp_path: Path) -> None:
    write(tmp_path, "base.toml", '[filesystem]\nro = ["/usr"]\n')
    e = error_of(tmp_path, 'extends = "base.toml"\n[filesystem]\n'
                           'symlinks = [{ dest = "/usr", target = "/opt" }]\n')
    assert (Path(e.file).name, e.line, e.column) == ("x.toml", 3, 22)
    assert e.message.startswith("destination /usr of this symlink is also a bind's, from "
                                "another layer")
    assert e.source_line == 'symlinks = [{ dest = "/usr", target = "/opt" }]'


def test_show_and_diff_list_them(tmp_path: Path) -> None:
    path = str(write(tmp_path, "p.toml", PLACED))
    r = CliRunner().invoke(profile_group, ["show", "--json", path])
    assert r.exit_code == 0, r.output
    fs = json.loads(r.stdout)["filesystem"]
    assert fs["symlinks"][0] == {"dest": "/opt/app/python", "target": "/usr/bin/python3"}
    assert fs["dirs"] == ["/work", "/var/cache/app"]
    assert fs["data_files"] == [{"dest": "/etc/app.conf", "size": 12,
                                 "contents": "mode = fast\n"}]
    r = CliRunner().invoke(profile_group, ["show", path])
    assert "  dirs: ('/work', '/var/cache/app')" in r.stdout
    r = CliRunner().invoke(profile_group, ["diff", "default", path])
    assert "+ filesystem.dirs: /work" in r.stdout


def test_build_spec_places_them_and_refuses_a_clash_with_a_flag(tmp_path: Path) -> None:
    from warden.supervisor.sandbox import SpecError, build_spec

    prof = load_profile(str(write(tmp_path, "p.toml", PLACED)))
    spec = build_spec(["/bin/true"], prof, seccomp_filter=None, dirs=("/flag",))
    assert spec.symlinks == (("/opt/app/python", "/usr/bin/python3"),
                             ("/opt/app/conf", "../../etc/app.conf"))
    assert spec.dirs == ("/work", "/var/cache/app", "/flag")
    assert spec.data_files == (("/etc/app.conf", b"mode = fast\n"),)
    with pytest.raises(SpecError, match=r"^--dir /work: destination /work is already used "
                                        r"by profile p dir /work$"):
        build_spec(["/bin/true"], prof, dirs=("/work",))


def test_checked_then_run_the_sandbox_holds_them(tmp_path: Path) -> None:
    """`warden profile check` accepts the file, and `warden run` under it sees the
    link, the directory and the read-only file."""
    path = write(tmp_path, "placed.toml", PLACED)
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    env = python_env()
    check = subprocess.run([PYTHON, "-m", "warden", "profile", "check", str(path)],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert check.returncode == 0 and check.stdout.startswith(f"{path}: ok"), check.stderr
    code = ("import os\n"
            "print(os.readlink('/opt/app/python'), os.path.realpath('/opt/app/conf'))\n"
            "print(os.path.isdir('/work'), os.path.isdir('/var/cache/app'))\n"
            "print(open('/opt/app/conf').read().strip(), oct(os.stat('/etc/app.conf').st_mode))\n"
            "try:\n    open('/etc/app.conf', 'w')\nexcept OSError as e:\n"
            "    print('write', e.errno)\n")
    r = subprocess.run([PYTHON, "-m", "warden", "run", "-q", "-p", str(path), "--",
                        "/opt/app/python", "-I", "-S", "-c", code], capture_output=True,
                       text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["/usr/bin/python3 /etc/app.conf", "True True",
                                     "mode = fast 0o100444", "write 30"]  # EROFS


DOC = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"


@pytest.mark.parametrize("heading", ["## Links, directories and files placed in the sandbox",
                                     "## The `[broker]` section"])
def test_the_documented_examples_load_or_fail_as_shown(heading: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each TOML example of the section loads; one followed by "is refused with" fails
    with exactly the error shown after it (as `mine.toml` in the current directory)."""
    section = DOC.read_text().split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    monkeypatch.chdir(tmp_path)
    blocks = section.split("```")
    examples = 0
    for i in range(1, len(blocks), 2):
        if not blocks[i].startswith("toml\n"):
            continue
        text = blocks[i].removeprefix("toml\n")
        name = blocks[i - 1].rsplit("`", 2)[1] if "is refused with" in blocks[i + 1] else "ok.toml"
        Path(name).write_text(text)
        examples += 1
        if name == "ok.toml":
            load_profile(f"./{name}")
            continue
        with pytest.raises(ProfileError) as info:
            load_profile(name)
        assert str(info.value) == blocks[i + 2].strip("\n")
    assert examples == 2
