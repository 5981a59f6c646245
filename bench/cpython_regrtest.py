"""CPython's own regression suite inside `warden run -p default` and outside, module by module.

Each module runs as its own `python3 -m test` (so one module's crash or
seccomp kill cannot hide another's results), once outside any sandbox and once
under `warden run -p default`, with the same interpreter, resources and
environment. Per module it prints the test cases passed, failed (failures and
errors) and skipped on each side, read from regrtest's JUnit XML, and the
modules whose counts differ.

The sandbox runs the program as an unprivileged uid (1000 inside), so when
this script runs as root the outside run drops to an ordinary uid too
(setpriv; uid 1000 when /etc/passwd names it, as it names the sandbox's,
else 4242): root-only test cases would otherwise differ for a reason that has
nothing to do with the profile. Limits are raised for the suite (it needs more than the
profile's defaults for an ordinary program); the seccomp filter, namespaces
and binds are the profile's own.

    .venv/bin/python bench/cpython_regrtest.py                 # the default module set
    .venv/bin/python bench/cpython_regrtest.py test_os test_re  # chosen modules
    .venv/bin/python bench/cpython_regrtest.py --json out.json  # also the raw numbers

Needs the interpreter's test package (Debian: libpython3.X-testsuite).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

PYTHON = "/usr/bin/python3"
MODULES = (
    "test_os", "test_subprocess", "test_signal", "test_pickle", "test_socket", "test_select",
    "test_selectors", "test_poll", "test_epoll", "test_json", "test_re", "test_threading",
    "test_tempfile", "test_shutil", "test_pathlib", "test_io", "test_fileio", "test_time",
    "test_datetime", "test_math", "test_struct", "test_zipfile", "test_tarfile", "test_sqlite3",
    "test_fcntl", "test_posix", "test_resource", "test_mmap", "test_socketserver", "test_logging",
    "test_csv", "test_hashlib", "test_zlib", "test_gzip", "test_bz2", "test_lzma", "test_glob",
    "test_stat", "test_grp", "test_pwd", "test_platform", "test_uuid", "test_ipaddress",
    "test_httplib", "test_httpservers", "test_urllib2_localnet", "test_xmlrpc", "test_wsgiref",
    "test_pty", "test_faulthandler", "test_tracemalloc", "test_sys", "test_sysconfig",
    "test_cmd_line", "test_concurrent_futures", "test_queue", "test_locale", "test_calendar",
    "test_shelve", "test_dbm", "test_posixpath", "test_genericpath", "test_fileinput",
    "test_filecmp", "test_getpass", "test_ssl",
)
# Everything but what reaches the Internet, fills the disk, or needs hours or a display.
RESOURCES = "all,-network,-urlfetch,-largefile,-extralargefile,-cpu,-gui,-audio,-curses,-decimal"

def _unpriv_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(1000)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 4242, 4242


UNPRIV_UID, UNPRIV_GID = _unpriv_ids()
SANDBOX_OPTIONS = ("--tmp-size", "1G", "--max-procs", "256", "--max-open-files", "4096",
                   "--cpu-time", "1800", "--timeout", "1800")
ENV_KEEP = ("LANG", "LC_ALL", "TERM")


@dataclass
class Side:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    outcome: str = ""          # regrtest's verdict, or how the run ended
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)
    note: str = ""


def _count(xml_path: str, side: Side) -> None:
    root = ET.parse(xml_path).getroot()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}.{case.get('name', '')}".rsplit(".", 2)
        label = ".".join(name[-2:])
        if case.find("failure") is not None or case.find("error") is not None:
            side.failed += 1
            side.failures.append(label)
        elif case.find("skipped") is not None:
            side.skipped += 1
            side.skips.append(label)
        else:
            side.passed += 1


def _outcome(rc: int, out: str) -> str:
    for line in reversed(out.splitlines()):
        if line.startswith("Tests result: ") or line.startswith("Result: "):
            return line.split(": ", 1)[1].strip()
    return f"exit {rc}"


def run_module(module: str, inside: bool, warden: list[str], timeout: float) -> Side:
    side = Side()
    work = tempfile.mkdtemp(prefix=f"regrtest-{'in' if inside else 'out'}-")
    os.chmod(work, 0o777)
    env = {k: os.environ[k] for k in ENV_KEEP if k in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    test = ["-m", "test", "-u", RESOURCES, "--timeout", str(int(timeout)), module]
    if inside:
        # HOME as a fresh directory on both sides (inside: the sandbox's own /tmp).
        argv = [*warden, "run", "-p", "default", *SANDBOX_OPTIONS, "--bind", f"{work}:/results",
                "--env", "HOME=/tmp", "--chdir", "/tmp", "--",
                PYTHON, *test, "--junit-xml", "/results/junit.xml"]
        xml = os.path.join(work, "junit.xml")
    else:
        home = os.path.join(work, "home")
        os.mkdir(home)
        os.chmod(home, 0o777)
        env.update(HOME=home, TMPDIR=work)
        xml = os.path.join(work, "junit.xml")
        argv = [PYTHON, *test, "--junit-xml", xml]
        if os.geteuid() == 0:
            argv = ["setpriv", f"--reuid={UNPRIV_UID}", f"--regid={UNPRIV_GID}",
                    "--clear-groups", *argv]
    start = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, cwd=work, env=env,
                           stdin=subprocess.DEVNULL, timeout=timeout + 120)
        side.outcome = _outcome(r.returncode, r.stdout)
        tail = [line for line in (r.stdout + r.stderr).splitlines()
                if "seccomp violation" in line or line.startswith("warden:")]
        side.note = "; ".join(tail[-2:])
    except subprocess.TimeoutExpired:
        side.outcome = "timed out"
    side.seconds = time.monotonic() - start
    if os.path.exists(xml):
        try:
            _count(xml, side)
        except ET.ParseError as e:
            side.note = (side.note + f"; junit unreadable: {e}").strip("; ")
    else:
        side.note = (side.note + "; no junit xml (the run ended early)").strip("; ")
    shutil.rmtree(work, ignore_errors=True)
    return side


def _same(o: Side, i: Side) -> bool:
    return (o.passed, o.failed, o.skipped, o.outcome) == (i.passed, i.failed, i.skipped, i.outcome)


def table(results: dict[str, dict[str, Side]]) -> str:
    rows = ["| module | outside pass / fail / skip | inside pass / fail / skip | regrtest outside"
            " / inside | same? |",
            "|---|---:|---:|---|---|"]
    tot = {k: [0, 0, 0] for k in ("out", "in")}
    for module, sides in results.items():
        cells = []
        for key in ("out", "in"):
            s = sides[key]
            tot[key] = [a + b for a, b in zip(tot[key], (s.passed, s.failed, s.skipped),
                                              strict=True)]
            cells.append(f"{s.passed} / {s.failed} / {s.skipped}")
        o, i = sides["out"], sides["in"]
        same = "yes" if _same(o, i) else "**no**"
        rows.append(f"| {module} | {cells[0]} | {cells[1]} | {o.outcome} / {i.outcome} | {same} |")
    rows.append("| **total** | " + " | ".join(" / ".join(map(str, tot[k])) for k in ("out", "in"))
                + " | | |")
    return "\n".join(rows)


def _names(names: list[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def differences(results: dict[str, dict[str, Side]]) -> str:
    out = []
    for module, sides in results.items():
        o, i = sides["out"], sides["in"]
        if _same(o, i):
            continue
        only_in = sorted(set(i.failures) - set(o.failures))
        only_out = sorted(set(o.failures) - set(i.failures))
        out.append(f"- {module}: outside {o.outcome}, inside {i.outcome}"
                   + (f" ({i.note})" if i.note else ""))
        if only_in:
            out.append(f"  - fail only inside: {_names(only_in)}")
        if only_out:
            out.append(f"  - fail only outside: {_names(only_out)}")
        for where, names in (("inside", sorted(set(i.skips) - set(o.skips))),
                             ("outside", sorted(set(o.skips) - set(i.skips)))):
            if names:
                out.append(f"  - skipped only {where}: {_names(names)}")
    return "\n".join(out) or "(none)"


def report(results: dict[str, dict[str, Side]]) -> str:
    return f"{table(results)}\n\nDifferences:\n{differences(results)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("modules", nargs="*", help=f"test modules (default: {len(MODULES)} of them)")
    ap.add_argument("--timeout", type=float, default=900, help="per test file, each side")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results here")
    ap.add_argument("--report", metavar="FILE", help="print the tables of an earlier --json file")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            raw = json.load(f)
        print(report({m: {k: Side(**s) for k, s in v.items()} for m, v in raw.items()}))
        return
    testdir = subprocess.run([PYTHON, "-c", "import test, os; print(os.path.dirname("
                              "test.__file__))"], capture_output=True, text=True).stdout.strip()
    if not os.path.exists(os.path.join(testdir, "test_os.py")):
        sys.exit(f"{PYTHON} has no regression tests (install libpython3.{sys.version_info.minor}"
                 "-testsuite)")
    modules = args.modules or [m for m in MODULES
                               if os.path.exists(os.path.join(testdir, m + ".py"))
                               or os.path.isdir(os.path.join(testdir, m))]
    warden = [sys.executable, "-m", "warden"]
    results: dict[str, dict[str, Side]] = {}
    for module in modules:
        # Alternate the order, so load elsewhere on the machine hits both sides alike.
        sides = {}
        for key in (("out", "in") if len(results) % 2 == 0 else ("in", "out")):
            sides[key] = run_module(module, key == "in", warden, args.timeout)
        results[module] = {"out": sides["out"], "in": sides["in"]}
        o, i = results[module]["out"], results[module]["in"]
        print(f"{module}: outside {o.passed}/{o.failed}/{o.skipped} {o.outcome} "
              f"({o.seconds:.0f}s), inside {i.passed}/{i.failed}/{i.skipped} {i.outcome} "
              f"({i.seconds:.0f}s) {i.note}", file=sys.stderr, flush=True)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({m: {k: asdict(s) for k, s in v.items()} for m, v in results.items()}, f,
                      indent=1)


if __name__ == "__main__":
    main()
