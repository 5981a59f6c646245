"""`warden run`'s lean parser reads every argument list it accepts exactly as click does.

The lean parser (warden.supervisor.sandbox.options.LeanParser) is generated
from the option declarations, as the click options are; these tests generate
argument lists from the same declarations (every option, every spelling,
good and bad values, repeats, values that look like flags, missing `--`) and
compare: where the lean parser gives up, click decides; where it does not,
click must agree on every field. And it must not give up on plain arguments,
or `warden run` would pay for click after all.
"""

from __future__ import annotations

import itertools
import random
import subprocess

import click
import pytest

from tests.sandbox.sandbox_util import PYTHON, supervisor_env
from warden.errors import EXIT_SETUP
from warden.supervisor.run_cli import LEAN, run_command
from warden.supervisor.sandbox.options import Option, SandboxOptions, described

# Values per kind: the first is a plain good one; the rest are edges either parser may meet.
VALUES: dict[str, list[str]] = {
    "text": ["default", "", "x y", "-x", "--", "--profile", "a=b", "é"],
    "texts": ["/usr", "/a:/b", "", "-", "--", "--bind", "K=V=W"],
    "size": ["1M", "65536", "2G", "0", "lots", "-1", "1.5M", " 1M", ""],
    "count": ["4", "1", "0", "-1", "+3", " 5", "1_0", "0x10", "1.0", "", "x"],
    "seconds": ["1.5", "2", "0", "-0.5", "nan", "inf", "1e-3", "", "x", " 3"],
    "fd": ["5", "0", "-1", "03", "x", ""],
    "fds": ["5", "0", "-1", "7", "x"],
    "id": ["1000", "0", "-1", "+4", "x", "4294967296"],
}
OPTIONS: list[tuple[str, Option]] = [(n, o) for n, o in described() if o.kind != "api"]


def spellings(o: Option) -> list[str]:
    return [s for s in (o.flag, o.short) if s]


def by_click(argv: list[str]) -> tuple[tuple[str, ...], bool, SandboxOptions] | None:
    try:
        params = run_command.make_context("run", list(argv)).params
    except (click.exceptions.ClickException, click.exceptions.Exit):
        return None
    program, quiet = params.pop("program"), params.pop("quiet")
    return tuple(program), quiet, SandboxOptions(**params)


def by_lean(argv: list[str]) -> tuple[tuple[str, ...], bool, SandboxOptions] | None:
    parsed = LEAN.parse(list(argv))
    if parsed is None:
        return None
    fields, program = parsed
    quiet = fields.pop("quiet", False)
    return tuple(program), quiet, SandboxOptions(**fields)


def agree(argv: list[str]) -> bool:
    """The parsers agree on argv; True if the lean parser accepted it."""
    lean = by_lean(argv)
    if lean is None:
        return False
    assert repr(by_click(argv)) == repr(lean), argv  # repr: NaN == NaN
    return True


def single_cases() -> list[list[str]]:
    cases = []
    for _, o in OPTIONS:
        for spelling in spellings(o):
            if o.kind in ("flag", "no-flag"):
                cases += [[spelling, "--", "/bin/true"], [spelling, spelling, "--", "x"],
                          [f"{spelling}=1", "--", "x"], [spelling, "-q", "--", "x", "-y"]]
                continue
            for v in VALUES[o.kind]:
                cases += [[spelling, v, "--", "/bin/true"], [spelling, v, "-q", "--", "x"],
                          [spelling, v, spelling, VALUES[o.kind][0], "--", "x"],
                          [spelling, v], [spelling]]
                if spelling.startswith("--"):
                    cases += [[f"{spelling}={v}", "--", "/bin/true", "a"]]
                else:
                    cases += [[spelling + v, "--", "x"]]
    return cases


def test_every_option_alone_agrees_and_plain_ones_stay_lean() -> None:
    for argv in single_cases():
        agree(argv)
    for name, o in OPTIONS:
        for spelling in spellings(o):
            plain = [spelling] if o.kind in ("flag", "no-flag") else [spelling, VALUES[o.kind][0]]
            assert agree([*plain, "--", "/bin/true"]), (name, spelling)


def test_the_command_shape_agrees() -> None:
    for argv in (["--", "/bin/true"], ["-q", "--", "/bin/true", "--", "-q"], [], ["--"],
                 ["/bin/true"], ["-q", "/bin/true"], ["--", ""], ["-h", "--", "x"],
                 ["--help"], ["--quiet=1", "--", "x"], ["-", "--", "x"], ["--nosuch", "--", "x"],
                 ["--profile"], ["--prof", "default", "--", "x"], ["-qp", "x", "--", "y"]):
        agree(argv)
    assert agree(["--", "/bin/true"]) and agree(["-q", "--quiet", "--", "/bin/true", "--"])


def test_generated_mixtures_agree() -> None:
    """Random argument lists of several options (fixed seed: reproducible)."""
    rng = random.Random(1315)
    accepted = 0
    for _ in range(3000):
        argv: list[str] = []
        for _ in range(rng.randrange(0, 6)):
            _, o = rng.choice(OPTIONS)
            spelling = rng.choice(spellings(o))
            if o.kind in ("flag", "no-flag"):
                argv.append(spelling)
            elif spelling.startswith("--") and rng.random() < 0.3:
                argv.append(f"{spelling}={rng.choice(VALUES[o.kind])}")
            else:
                argv += [spelling, rng.choice(VALUES[o.kind])]
        if rng.random() < 0.2:
            argv.insert(rng.randrange(len(argv) + 1), rng.choice(["-q", "--quiet"]))
        if rng.random() < 0.9:
            argv += ["--", *rng.choice([["/bin/true"], ["x", "--", "-q"], []])]
        accepted += agree(argv)
    assert accepted > 1000  # most generated lists are plain: the lean parser read them


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_each_kind_has_a_lean_converter_that_matches_click(kind: str) -> None:
    declared = {o.kind for _, o in OPTIONS}
    if kind not in declared:
        pytest.fail(f"no option of kind {kind} is declared any more: drop it from VALUES")
    o = next(o for _, o in OPTIONS if o.kind == kind)
    for v, w in itertools.product(VALUES[kind], repeat=2):
        agree([o.flag, v, o.flag, w, "--", "x"])


def test_a_kind_without_values_here_fails_loudly() -> None:
    kinds = {o.kind for _, o in OPTIONS} - {"flag", "no-flag"}
    assert kinds <= set(VALUES), f"add values for {kinds - set(VALUES)} to VALUES"


def warden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "warden", "run", *args], capture_output=True,
                          text=True, env=supervisor_env(), timeout=60)


def test_errors_met_on_the_lean_path_are_worded_by_click() -> None:
    """An error found after the lean parser accepted the arguments (a bad profile, a
    refused bind) is still click's usage error: its usage line, its exit code."""
    for args, words in ((("-p", "nosuch", "--", "/bin/true"), 'no profile named "nosuch"'),
                        (("--ro-bind", "/nonexistent-x", "--", "/bin/true"),
                         "--ro-bind /nonexistent-x"),
                        (("--json-status", "-", "--json-status-fd", "1", "--", "/bin/true"),
                         "give one of them")):
        assert LEAN.parse(list(args)) is not None
        r = warden(*args)
        assert r.returncode == EXIT_SETUP, r.stderr
        lines = r.stderr.splitlines()
        assert lines[0].startswith("Usage: ") and " run [OPTIONS] PROGRAM..." in lines[0], lines
        assert lines[-1].startswith("Error: ") and words in lines[-1], lines


def test_plain_run_never_imports_click() -> None:
    probe = ("import os, sys\n"
             "real = os._exit\n"
             "def leave(code):\n"
             "    sys.stderr.write('click' in sys.modules and 'CLICK' or 'NO-CLICK')\n"
             "    sys.stderr.flush()\n"
             "    real(code)\n"
             "os._exit = leave\n"
             "sys.argv = ['warden', 'run', '-q', '--', '/bin/true']\n"
             "from warden.supervisor.cli import entry\n"
             "entry()\n")
    r = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True,
                       env=supervisor_env(), timeout=60)
    assert (r.returncode, r.stderr) == (0, "NO-CLICK")
