"""The import rules between warden's layers, read from the source's AST.

Every `import` and `from ... import` statement counts, at module level and inside
functions alike (a lazy import is still a dependency); only the bodies of
`if TYPE_CHECKING:` blocks are left out (they never run). The rules:

- warden.profiles and warden.ipc import nothing of warden's but warden.errors;
- warden.supervisor.sandbox imports only warden.profiles, warden.errors and itself;
- nothing imports a CLI module except the CLI entry points;
- no circles among warden's modules.

KNOWN_VIOLATIONS lists what still breaks a rule while the layers are being
untangled: the test fails on any violation not listed, and warns about a listed
one that no longer occurs (then delete its line). The goal is an empty set.

Also here: the wheel installs the one top-level name `warden`, and it shares a
fresh venv with supervisord (PyPI's `supervisor`), both working.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import venv
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Each line is one violation on the branch this set was written on, with why it is
# there; the layers' own clean-ups remove them.
KNOWN_VIOLATIONS: set[str] = set()

LEAF_LAYERS = ("warden.profiles", "warden.ipc")  # import only warden.errors
SANDBOX = "warden.supervisor.sandbox"
SANDBOX_MAY_IMPORT = ("warden.profiles", "warden.errors", SANDBOX)
CLI_MODULES = ("warden.supervisor.cli", "warden.supervisor.run_cli",
               "warden.supervisor.serve_cli", "warden.profiles.cli")
CLI_ENTRY_POINTS = ("warden.supervisor.cli", "warden.__main__", "warden.supervisor.__main__")


def _source_files() -> dict[str, Path]:
    """Module name -> source file, through pyproject's package-dir map (the
    folders the wheel installs under `warden`)."""
    tool = PYPROJECT["tool"]["setuptools"]
    out: dict[str, Path] = {}
    for package in tool["packages"]:
        # The longest mapped prefix names the folder (warden.supervisor.sandbox
        # lies in supervisor/sandbox/).
        base = max((p for p in tool["package-dir"] if package == p or
                    package.startswith(p + ".")), key=len)
        folder = ROOT / tool["package-dir"][base] / Path(*package[len(base):].split(".")[1:])
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


MODULES = _source_files()


@dataclass(frozen=True)
class Import:
    source: str   # the importing module
    target: str   # the warden module it names
    line: int


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, at any depth, outside TYPE_CHECKING blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _statements(node)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].stem == "__init__" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    out = []
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = _resolve(module, node)
            # `from warden import ipc` imports the module warden.ipc; `from
            # warden.ipc import Session` imports warden.ipc.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        for name in names:
            if name == "warden" or name.startswith("warden."):
                out.append(Import(module, name, node.lineno))
            elif name.split(".")[0] in ("supervisor", "profiles", "ipc", "warden_pkg"):
                out.append(Import(module, "<bare> " + name, node.lineno))
    return out


IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _rule_violations() -> set[str]:
    found = set()
    for imp in IMPORTS:
        edge = f"{imp.source} imports {imp.target}"
        if imp.target.startswith("<bare> "):
            found.add(f"{edge} (a checkout folder by its bare name)")
            continue
        for layer in LEAF_LAYERS:
            if _within(imp.source, (layer,)) and not _within(imp.target, (layer, "warden.errors")):
                found.add(f"{edge} (the {layer} layer imports only warden.errors)")
        if _within(imp.source, (SANDBOX,)) and not _within(imp.target, SANDBOX_MAY_IMPORT):
            found.add(f"{edge} (the sandbox imports only profiles, errors and itself)")
        if imp.target in CLI_MODULES and imp.source not in CLI_ENTRY_POINTS:
            found.add(f"{edge} (only the CLI entry points import a CLI module)")
    return found


def _circles() -> set[str]:
    """Each import that lies on a circle: an edge a -> b where b leads back to a."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if imp.target in MODULES and imp.target != imp.source:
            graph[imp.source].add(imp.target)

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reaches = {m: reach(m) for m in MODULES}
    return {f"circle: {a} -> {b}" for a, targets in graph.items() for b in targets
            if a in reaches[b]}


def _check(found: set[str]) -> None:
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "import rules broken (fix, or for now list in KNOWN_VIOLATIONS):\n" + \
        "\n".join(new)


def test_the_source_map_finds_every_layer() -> None:
    """A guard for the test itself: the AST walk sees the modules and their imports."""
    for name in ("warden", "warden.errors", "warden.__main__", "warden.profiles.loader",
                 "warden.ipc.session", "warden.supervisor.core", f"{SANDBOX}.child",
                 *CLI_MODULES):
        assert name in MODULES, name
    loader = {imp.target for imp in IMPORTS if imp.source == "warden.profiles.loader"}
    assert {"warden.profiles.errors", "warden.profiles.argwidth"} <= loader


def test_layer_and_cli_rules() -> None:
    _check(_rule_violations())


def test_no_import_circles() -> None:
    _check(_circles())


def test_known_violations_still_occur() -> None:
    """A listed violation that is gone is only reported: delete its line."""
    gone = sorted(KNOWN_VIOLATIONS - _rule_violations() - _circles())
    if gone:
        warnings.warn("KNOWN_VIOLATIONS entries that no longer occur (delete them):\n"
                      + "\n".join(gone), stacklevel=1)


def test_the_walk_counts_function_level_imports_and_skips_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import warden.a\n"
        "if TYPE_CHECKING:\n    import warden.b\nelse:\n    import warden.c\n"
        "def f():\n    from warden import d\n"
        "class K:\n    def g(self):\n        if x:\n            import warden.e\n")
    names = [a.name if isinstance(n, ast.Import) else f"{n.module}.{a.name}"
             for n in _statements(tree) for a in n.names]
    assert names == ["typing.TYPE_CHECKING", "warden.a", "warden.c", "warden.d", "warden.e"]


@pytest.mark.parametrize("layer", [*LEAF_LAYERS, SANDBOX])
def test_importing_a_layer_loads_nothing_else_of_wardens(layer: str) -> None:
    """What the AST walk cannot see: importing a module runs its parent packages'
    __init__ too. Import every module of the layer in a fresh interpreter (the
    installed package) and list the warden modules that came with them."""
    from tests.interpreter import PYTHON, python_env

    allowed = (layer, "warden.errors", *(SANDBOX_MAY_IMPORT if layer == SANDBOX else ()))
    parents = {".".join(layer.split(".")[:i]) for i in range(1, layer.count(".") + 1)}
    names = sorted(m for m in MODULES if _within(m, (layer,)))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'warden')))")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                       env=python_env(), cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert set(names) <= loaded
    assert sorted(m for m in loaded if m not in parents and not _within(m, allowed)) == []


# --- the wheel -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel as `pip wheel` builds it, from a copy of the source (the checkout
    may not be writable by this uid, and scripts/setup builds in it too)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    names = ["pyproject.toml", "README.md", *sorted(set(
        PYPROJECT["tool"]["setuptools"]["package-dir"].values()))]
    subprocess.run(["cp", "-r", *(str(ROOT / n) for n in names), str(src)], check=True)
    out = work / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = out.glob("warden_sandbox-*.whl")
    return built


def test_the_wheel_installs_only_the_warden_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
        dist_info = {f.split("/")[0] for f in files if f.split("/")[0].endswith(".dist-info")}
        (info,) = dist_info
        top = z.read(f"{info}/top_level.txt").decode().split()
        metadata = z.read(f"{info}/METADATA").decode()
    assert top == ["warden"]
    assert {f.split("/")[0] for f in files} == {"warden", info}
    assert "Name: warden-sandbox\n" in metadata
    # The built-ins travel as package data, apart from the code.
    assert {f for f in files if f.startswith("warden/profiles/") and f.endswith(".toml")} == \
        {f"warden/profiles/builtin/{n}.toml"
         for n in ("default", "network-client", "python-worker", "strict")}


def test_warden_and_supervisord_install_side_by_side(wheel: Path, tmp_path: Path) -> None:
    """One fresh venv, warden-sandbox (this wheel) and supervisord (PyPI's
    `supervisor`, whose top-level package is also named `supervisor`, like this
    repository's folder): pip installs both from the configured index, and both
    work."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, symlinks=True)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel),
                        "supervisor"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    r = run(str(bin_dir / "warden"), "--help")
    assert r.returncode == 0 and "profile" in r.stdout, r.stdout + r.stderr
    r = run(str(bin_dir / "python"), "-m", "warden", "run", "--", "/bin/true")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(str(bin_dir / "supervisord"), "--version")
    assert r.returncode == 0 and r.stdout.strip()[:1].isdigit(), r.stdout + r.stderr
    r = run(str(bin_dir / "echo_supervisord_conf"))
    assert r.returncode == 0 and "[supervisord]" in r.stdout, r.stdout + r.stderr
    # Each name is its own package: supervisord's `supervisor`, warden's `warden`.
    r = run(str(bin_dir / "python"), "-c",
            "import supervisor, warden.supervisor, os; "
            "print(os.path.dirname(supervisor.__file__)); "
            "print(os.path.dirname(warden.supervisor.__file__))")
    assert r.returncode == 0, r.stderr
    theirs, ours = r.stdout.split()
    assert (Path(theirs).name, Path(ours).parent.name, Path(ours).name) == \
        ("supervisor", "warden", "supervisor")
