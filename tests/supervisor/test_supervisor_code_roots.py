"""Worker code where users keep it: `spawn(Iface, "mymod:Impl")` works when the embedder can
import `mymod` (a script's directory, a src/ layout), under every start method, with no
`zygote_preload` or `code_paths`; and the worker sees only that module's own files, not
what lies beside them (a checkout's .git, a secrets file next to the script)."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.supervisor.util import run
from warden.supervisor import Supervisor

MODULE = textwrap.dedent('''
    import os
    from typing import Annotated

    import msgspec

    from warden import ipc

    Path = Annotated[str, msgspec.Meta(max_length=4096)]


    class Lister(ipc.Interface, name="test.Lister"):
        @ipc.call()
        def listing(self, ctx: ipc.Context, path: Path) -> list[str]:
            raise NotImplementedError


    class ListerImpl(Lister):
        def listing(self, ctx: ipc.Context, path: str) -> list[str]:
            try:  # (a __pycache__ its own import wrote on its tmpfs is no host file)
                return sorted(n for n in os.listdir(path) if n != "__pycache__")
            except OSError as e:
                return ["error: " + type(e).__name__]
''')


def _project(root: Path, layout: str) -> tuple[str, str, Path]:
    """A user's project: (module, its sys.path entry, the project dir), with a
    secret and a .git beside the code."""
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    project = root / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "config").write_text("[core]\n")
    (project / "secret.txt").write_text("do not read\n")
    if layout == "script":
        (project / f"{name}.py").write_text(MODULE)
        entry = project
    else:  # src/ layout: a package under src/
        pkg = project / "src" / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(MODULE)
        entry = project / "src"
    for d in (root, project, entry):
        os.chmod(d, 0o755)  # readable by the sandbox's uid, as a home's project is
    return name, str(entry), project


@pytest.fixture
def on_path(tmp_path: Path) -> Iterator[Path]:
    os.chmod(tmp_path, 0o755)
    before = list(sys.path)
    yield tmp_path
    sys.path[:] = before


@pytest.mark.parametrize("layout", ["script", "src"])
@pytest.mark.parametrize("method", ["zygote", "spawn"])
def test_a_module_beside_secrets_runs_and_sees_only_its_own_files(
        on_path: Path, method: str, layout: str) -> None:
    name, entry, project = _project(on_path, layout)
    sys.path.insert(0, entry)
    mod = __import__(name)

    async def main() -> None:
        async with Supervisor(start_method=method) as sup:  # no preload, no code_paths
            # `default` lets the worker look around (strict, the default, kills openat)
            w = await sup.spawn(mod.Lister, f"{name}:ListerImpl", profile="default")
            listed = await w.remote.listing(entry)
            beside = await w.remote.listing(str(project))
            own = name + ".py" if layout == "script" else name
            assert listed == [own], listed
            # The project dir holds only the path to the code: no .git, no secret.
            assert ".git" not in beside and "secret.txt" not in beside, beside
            # The supervisor carries on with other workers of other code.
            from tests.supervisor.util import CALC
            from tests.supervisor.workers import Calc

            calc = await sup.spawn(Calc, CALC)
            assert await calc.remote.square(9) == 81
            assert await w.remote.listing(entry) == [own]  # the first worker lives on

    run(main())
