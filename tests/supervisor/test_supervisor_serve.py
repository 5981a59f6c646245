"""`warden serve`: config errors name file and key; a real server answers and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.interpreter import PYTHON, python_env
from tests.supervisor.util import WORKTREE, alive
from warden.errors import EXIT_SETUP
from warden.supervisor.cli import main as cli
from warden.supervisor.serve_config import ConfigError, load_config

GOOD = """
[supervisor]
start_method = "zygote"
preload = ["tests.supervisor.workers"]
status_socket = "{sock}"

[pools.calc]
interface = "tests.supervisor.workers:Calc"
module = "tests.supervisor.workers:CalcImpl"
profile = "strict"
count = 2
restart = "on-failure"
call_timeout = 5
memory = "512M"
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "serve.toml"
    p.write_text(text)
    return str(p)


def test_config_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.format(sock=tmp_path / "s.sock")))
    (pool,) = cfg.pools
    assert (pool.name, pool.count, pool.profile, pool.memory) == ("calc", 2, "strict", 512 << 20)
    assert pool.restart.mode == "on-failure" and cfg.start_method == "zygote"


@pytest.mark.parametrize(("change", "message"), [
    (("count = 2", "count = 0"), "pools.calc.count: expected an integer >= 1, got 0"),
    (("restart = \"on-failure\"", "restart = \"sometimes\""),
     "pools.calc.restart: expected one of never, on-failure, always, got 'sometimes'"),
    (("memory = \"512M\"", "memory = \"lots\""), "pools.calc.memory 'lots': expected a size"),
    (("profile = \"strict\"", "colour = \"red\""), "pools.calc.colour: unknown key"),
    (("start_method = \"zygote\"", "start_method = \"vfork\""),
     "supervisor.start_method: expected one of spawn, zygote, fork, got 'vfork'"),
    (("module = \"tests.supervisor.workers:CalcImpl\"",
      "program = [\"/bin/true\"]\nmodule = \"x:y\""),
     "pools.calc: give exactly one of module"),
    (("count = 2", "count = ["), "Invalid"),
    (("count = 2", "count = 2\nro_binds = [\"/opt\"]"),
     "pools.calc.ro_binds: only for program pools"),

])
def test_config_errors_name_file_and_key(tmp_path: Path, change: tuple[str, str],
                                         message: str) -> None:
    path = write(tmp_path, GOOD.format(sock="s").replace(*change))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(path + ":")
    assert message in str(info.value)


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(sock="s").replace("count = 2", "count = -1"))
    r = CliRunner().invoke(cli, ["serve", path])
    assert r.exit_code == EXIT_SETUP
    assert r.output == (f"{path}:11:9: error: pools.calc.count: expected an integer >= 1, "
                        "got -1\n    count = -1\n            ^\n")


def test_serve_status_sigusr1_and_clean_shutdown(tmp_path: Path) -> None:
    sock = tmp_path / "status.sock"
    path = write(tmp_path, GOOD.format(sock=sock))
    env = python_env(WORKTREE)
    srv = subprocess.Popen([PYTHON, "-m", "warden", "serve", "-v", path],
                           env=env, cwd=WORKTREE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline and srv.poll() is None:
            time.sleep(0.05)
        r = subprocess.run([PYTHON, "-m", "warden", "status", path], env=env,
                           cwd=WORKTREE, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        assert snap["pools"]["calc"]["alive"] == 2
        pids = [w["pid"] for w in snap["pools"]["calc"]["workers"].values()]
        assert all(alive(p) for p in pids)
        assert (os.stat(sock).st_mode & 0o777) == 0o600
        srv.send_signal(signal.SIGUSR1)
        srv.send_signal(signal.SIGTERM)
        _out, err = srv.communicate(timeout=30)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert srv.returncode == 0, err
    assert "status: {" in err and "shutting down" in err
    assert not any(alive(p) for p in pids)
    assert not sock.exists()


def test_program_pool_in_process(tmp_path: Path) -> None:
    """A pool of programs (any executable speaking ipc on fd 3) from a config, served
    in-process until SIGTERM."""
    import asyncio
    import site

    from warden.supervisor.serve import serve

    # Where this interpreter finds warden: its site-packages, or (the ordinary-uid run
    # under the system python) the venv's packages on PYTHONPATH.
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    paths = list(dict.fromkeys(p for p in (WORKTREE, *site.getsitepackages(), *inherited)
                               if p and os.path.isdir(p)))
    code = ("from warden import ipc; from tests.supervisor.workers import CalcImpl; "
            "ipc.connect_from_env(serve=CalcImpl()).serve_forever()")
    path = write(tmp_path, f"""
[supervisor]
start_method = "spawn"
status_socket = "{tmp_path / 's.sock'}"

[pools.prog]
interface = "tests.supervisor.workers:Calc"
program = ["/usr/bin/python3", "-c", {json.dumps(code)}]
ro_binds = {json.dumps(paths)}
env = ["PYTHONPATH={':'.join(paths)}"]
count = 2
""")
    cfg = load_config(path)

    async def main() -> None:
        ready = asyncio.Event()
        server = asyncio.ensure_future(serve(cfg, ready=ready))
        await asyncio.wait_for(ready.wait(), 60)
        from warden.supervisor.serve import query_status
        snap = await asyncio.get_running_loop().run_in_executor(
            None, query_status, str(tmp_path / "s.sock"))
        assert snap["pools"]["prog"]["alive"] == 2
        assert snap["pools"]["prog"]["target"][0] == "/usr/bin/python3"
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(server, 60) == 0

    asyncio.run(main())


PROGRAM = """
[supervisor]
code_paths = ["code"]

[pools.prog]
interface = "m:I"
program = ["/bin/cat"]
"""


def test_program_pool_takes_every_sandbox_option_warden_run_takes(tmp_path: Path) -> None:
    """One vocabulary: a program pool's keys are SandboxOptions' fields (those serve
    can give), decoded with the same bounds; module pools keep profile and memory."""
    from warden.supervisor.sandbox.options import SandboxOptions, described

    (tmp_path / "code").mkdir()
    extra = ('tmpfs = ["/scratch"]\ntimeout = 30\nmax_procs = 8\ntmp_size = "16M"\n'
             'share_net = true\nfiles = ["/etc/hostname:r"]\nkeep_env = ["LANG"]\n')
    cfg = load_config(write(tmp_path, PROGRAM + extra))
    assert cfg.code_paths == (str(tmp_path / "code"),)
    (pool,) = cfg.pools
    assert pool.options == SandboxOptions(
        profile="default", tmpfs=("/scratch",), timeout=30, max_procs=8, tmp_size=16 << 20,
        share_net=True, files=("/etc/hostname:r",), keep_env=("LANG",))
    # Every option serve can give is a key; none it cannot give is.
    for name, o in described():
        text = PROGRAM + f"{name} = {{}}\n"  # a table: of the wrong type for every option
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert ("unknown key" in str(info.value)) == (not o.serve), (name, str(info.value))
    with pytest.raises(ConfigError, match=r":8:1: error: pools.calc.tmpfs: only for program"):
        load_config(write(tmp_path, GOOD.format(sock="s").replace(
            "[pools.calc]", "[pools.calc]\ntmpfs = [\"/x\"]")))


@pytest.mark.parametrize(("text", "where"), [
    (PROGRAM.replace('["code"]', '["code", "nowhere"]'),
     ':3:23: error: supervisor.code_paths[1]: {tmp}/nowhere is not a directory'),
    (PROGRAM + 'env = ["A=1", 7]\n', ":8:15: error: pools.prog.env[1]: expected a string, got 7"),
    (PROGRAM + 'env = ["A=1", "B"]\n', ":8:15: error: pools.prog.env[1]: 'B' is not NAME=VALUE"),
    (PROGRAM + "count = 1.5\n", ":8:9: error: pools.prog.count: expected an integer >= 1"),
    (PROGRAM + "[other]\n", ":8:1: error: other: unknown section"),
    (PROGRAM.replace('interface = "m:I"\n', ""), ":5:1: error: pools.prog: interface is required"),
])
def test_config_errors_carry_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "code").mkdir()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    e = info.value
    assert str(e).startswith(path + where.format(tmp=tmp_path)), str(e)
    # Like a profile error: the line itself, and a caret under the column.
    _head, line, caret = str(e).split("\n")
    assert line == "    " + e.source_line and caret == "    " + " " * (e.column - 1) + "^"
