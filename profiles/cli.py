"""`warden profile ...` commands: list, show, check, compile, explain, diff, new, import, export.

Every command that reads a profile reports a bad one as a compiler would
(file:line:col, the line, a caret) and exits 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from warden.profiles import compiler, inspect, loader, oci
from warden.profiles.errors import ProfileError
from warden.profiles.model import Profile
from warden.profiles.starter import starter

P = ParamSpec("P")
R = TypeVar("R")


def _reports_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ProfileError as e:
            click.echo(str(e), err=True)
            sys.exit(1)

    return wrapper


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _load(name: str) -> Profile:
    return loader.load_profile(name)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group("profile")
def profile_group() -> None:
    """Write, check, inspect and share sandbox profiles."""


@profile_group.command("list")
@json_option
@_reports_errors
def list_cmd(as_json: bool) -> None:
    """Profiles by name: $WARDEN_PROFILE_PATH, ~/.config/warden/profiles, then the built-ins.

    A user file named like a built-in is listed with the error that refuses it.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    visited: set[Path] = set()
    builtins = set(loader.builtin_names())
    for directory in [loader.BUILTIN_DIR, *loader.user_search_path()]:
        try:
            if not directory.is_dir() or directory.resolve() in visited:
                continue
        except OSError:
            continue
        visited.add(directory.resolve())
        is_builtin = directory.resolve() == loader.BUILTIN_DIR
        for path in sorted(directory.glob("*.toml")):
            shadowed = path.stem in seen and path.stem not in builtins
            seen.add(path.stem)
            row: dict[str, Any] = {"name": path.stem, "path": str(path), "shadowed": shadowed,
                                   "builtin": is_builtin}
            if not is_builtin and path.stem in builtins:
                row["error"] = loader.shadow_error(path).message
            else:
                try:
                    row["description"] = loader.load_profile(str(path)).description
                except ProfileError as e:
                    row["error"] = str(e).splitlines()[0]
            rows.append(row)
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        if row["shadowed"]:
            continue
        tag = " (built-in)" if row["builtin"] else f" ({row['path']})"
        text = row.get("description") or row.get("error", "")
        click.echo(f"{row['name']:<16}{text}{tag}")


@profile_group.command("show")
@click.argument("name")
@json_option
@_reports_errors
def show_cmd(name: str, as_json: bool) -> None:
    """Every rule with its action, conditions and origin, and the other sections."""
    data = inspect.show(_load(name))
    if as_json:
        _emit_json(data)
        return
    sec = data["seccomp"]
    click.echo(f"profile {data['name']}  ({data['source']})")
    if data["description"]:
        click.echo(f"  {data['description']}")
    click.echo(f"seccomp: default {sec['default_action']}, "
               f"foreign arches {sec['bad_arch_action']}, "
               f"{len(sec['rules'])} rules, {sec['instructions']} BPF instructions")
    width = max((len(r["syscall"]) for r in sec["rules"]), default=8)
    for r in sec["rules"]:
        cond = f" if {' and '.join(r['conditions'])}" if r["conditions"] else ""
        click.echo(f"  {r['syscall']:<{width}}  {r['action']}{cond}    [{r['origin']}]")
    for section in ("namespaces", "filesystem", "limits", "environment", "broker"):
        click.echo(f"{section}:")
        for key, value in data[section].items():
            if isinstance(value, list | tuple) and value and isinstance(value[0], dict):
                for item in value:
                    click.echo(f"  {key}: {item}")
            else:
                click.echo(f"  {key}: {value}")


@profile_group.command("check")
@click.argument("files", nargs=-1, required=True)
@json_option
def check_cmd(files: tuple[str, ...], as_json: bool) -> None:
    """Parse, resolve and compile each FILE; exit 1 if any has an error."""
    results = []
    failed = False
    for f in files:
        try:
            prof = loader.load_profile(f)
            code = compiler.compile_policy(prof.seccomp)
            results.append({"file": f, "ok": True, "rules": len(prof.seccomp.rules),
                            "instructions": compiler.instruction_count(code)})
            if not as_json:
                click.echo(f"{f}: ok ({len(prof.seccomp.rules)} rules, "
                           f"{compiler.instruction_count(code)} BPF instructions)")
        except ProfileError as e:
            failed = True
            results.append({"file": f, "ok": False, "error": str(e), "line": e.line,
                            "column": e.column, "message": e.message})
            if not as_json:
                click.echo(str(e), err=True)
    if as_json:
        _emit_json(results)
    if failed:
        sys.exit(1)


@profile_group.command("compile")
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the raw BPF (struct sock_filter[]).")
@click.option("--kill-as-notify", is_flag=True,
              help="Emit kill actions as user-notify (for a supervising listener).")
@_reports_errors
def compile_cmd(name: str, output: str, kill_as_notify: bool) -> None:
    """Compile NAME to raw BPF, as `bwrap --seccomp FD` and seccomp(2) take it."""
    code = compiler.compile_policy(_load(name).seccomp, kill_as_notify=kill_as_notify)
    Path(output).write_bytes(code)
    click.echo(f"{output}: {compiler.instruction_count(code)} instructions, {len(code)} bytes")


@profile_group.command("explain")
@click.argument("name")
@click.argument("syscall")
@click.argument("args", nargs=-1)
@click.option("--arch", default="x86_64", type=click.Choice(sorted(inspect.ARCHES)),
              help="Pretend the call came in through this ABI.")
@json_option
@_reports_errors
def explain_cmd(name: str, syscall: str, args: tuple[str, ...], arch: str, as_json: bool) -> None:
    """What NAME's compiled filter does with SYSCALL(ARGS...), and which rule decided.

    ARGS are numbers or constants (AF_INET, CLONE_NEWUSER|CLONE_NEWNS, TIOCSTI).
    """
    data = inspect.explain(_load(name), syscall, args, arch=arch)
    if as_json:
        _emit_json(data)
        return
    click.echo(f"{data['syscall']}({', '.join(data['args'])}) [{arch}] under {data['profile']}: "
               f"{data['result']}")
    if data["decided_by"]:
        for r in data["decided_by"]:
            cond = f" if {' and '.join(r['conditions'])}" if r["conditions"] else ""
            click.echo(f"  decided by: {r['syscall']} {r['action']}{cond}  [{r['origin']}]")
    else:
        click.echo(f"  decided by: {data['reason']}")
    for note in data["notes"]:
        click.echo(f"  note: {note}")


@profile_group.command("diff")
@click.argument("a")
@click.argument("b")
@json_option
@_reports_errors
def diff_cmd(a: str, b: str, as_json: bool) -> None:
    """Rules and settings that differ between profiles A and B."""
    data = inspect.diff(_load(a), _load(b))
    if as_json:
        _emit_json(data)
        return
    for sign, key in (("-", "removed"), ("+", "added")):
        for r in data[key]:
            cond = f" if {' and '.join(r['conditions'])}" if r["conditions"] else ""
            click.echo(f"{sign} {r['syscall']} {r['action']}{cond}  [{r['origin']}]")
    for s in data["settings"]:
        if s["a"] is None:
            click.echo(f"+ {s['setting']}: {s['b']}")
        elif s["b"] is None:
            click.echo(f"- {s['setting']}: {s['a']}")
        else:
            click.echo(f"~ {s['setting']}: {s['a']!r} -> {s['b']!r}")
    if not (data["removed"] or data["added"] or data["settings"]):
        click.echo("no differences")


@profile_group.command("new")
@click.argument("name")
@click.option("--from", "parent", default="default", show_default=True,
              help="The profile the new one extends.")
@click.option("-d", "--dir", "directory", default="profiles", show_default=True,
              type=click.Path(file_okay=False), help="Where to write NAME.toml.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@_reports_errors
def new_cmd(name: str, parent: str, directory: str, force: bool) -> None:
    """Write a commented starter profile NAME.toml that extends --from."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ProfileError(f'"{name}" is not a profile name', expected="letters, digits, - and _")
    path = Path(directory) / f"{name}.toml"
    if name in loader.builtin_names():
        raise ProfileError(f'"{name}" is the name of a built-in profile, which always means '
                           f'the built-in; choose another name (for example "my-{name}")')
    loader.load_profile(parent)  # the parent must exist and be valid
    if path.exists() and not force:
        raise ProfileError(f"{path} already exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if "/" in parent or parent.endswith(".toml"):
        # A file: `extends` is read relative to the new file, not to where we are.
        parent = os.path.relpath(os.path.abspath(parent), os.path.abspath(path.parent))
        if "/" not in parent:
            parent = "./" + parent
    path.write_text(starter(name, parent, str(path)))
    loader.load_profile(str(path))
    click.echo(f"wrote {path} (extends {parent}); check it with: warden profile check {path}; "
               f"use it with: warden run -p {path}")


@profile_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the warden profile here instead of standard output.")
@_reports_errors
def import_cmd(file: str, output: str | None) -> None:
    """Convert an OCI/Docker seccomp JSON profile into a warden profile."""
    imported = oci.load_oci(Path(file).read_text(), file)
    text = oci.to_toml(imported, file)
    compiler.compile_policy(imported.policy)
    for note in imported.notes:
        click.echo(f"note: {note}", err=True)
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output} ({len(imported.policy.rules)} rules)", err=True)
    else:
        click.echo(text, nl=False)


@profile_group.command("export")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["oci", "bpf", "pfc"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write here instead of standard output.")
@_reports_errors
def export_cmd(name: str, fmt: str, output: str | None) -> None:
    """NAME as OCI seccomp JSON, raw BPF, or libseccomp's pseudo-filter text."""
    policy = _load(name).seccomp
    data: bytes
    if fmt == "oci":
        data = oci.dump_oci(policy).encode()
    elif fmt == "pfc":
        data = compiler.pfc_text(policy).encode()
    else:
        data = compiler.compile_policy(policy)
    if output:
        Path(output).write_bytes(data)
    else:
        if fmt == "bpf" and sys.stdout.isatty():
            raise ProfileError("refusing to write binary BPF to a terminal; use -o FILE")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
