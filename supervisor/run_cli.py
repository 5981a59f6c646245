"""`warden run [OPTIONS] -- PROGRAM [ARGS...]`: run a program in a sandbox, report how it ended.

Only click is imported at start-up; the sandbox, the profile loader and the
compiler load when the command runs, so `warden run` starts quickly.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from supervisor.sandbox import Sandbox, Status


class _Size(click.ParamType):  # type: ignore[type-arg]
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from supervisor.sandbox.spec import SpecError, parse_size

        try:
            return parse_size(str(value), f"--{param.name.replace('_', '-')}" if param and
                              param.name else "size")
        except SpecError as e:
            self.fail(str(e), param, ctx)


SIZE = _Size()


class OptionError(click.UsageError):
    """A bad option or profile: the sandbox cannot be set up, so 125 like a setup error."""

    exit_code = 125


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("-p", "--profile", default="default", show_default=True, metavar="NAME|PATH",
              help="Profile to run under (built-in name, name on the search path, or file).")
@click.option("--ro-bind", multiple=True, metavar="SRC[:DST]", help="Bind SRC read-only.")
@click.option("--bind", multiple=True, metavar="SRC[:DST]", help="Bind SRC read-write.")
@click.option("--tmpfs", multiple=True, metavar="DST", help="Mount an empty tmpfs at DST.")
@click.option("--chdir", metavar="DIR", help="Working directory inside the sandbox.")
@click.option("--memory", type=SIZE, help="Memory limit (e.g. 512M).")
@click.option("--max-procs", type=click.IntRange(min=1), help="Process/thread limit.")
@click.option("--max-open-files", type=click.IntRange(min=1), help="Open-file limit.")
@click.option("--cpu-time", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="CPU-time limit.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Wall-clock limit; the sandbox is killed when it expires.")
@click.option("--tmp-size", type=SIZE, help="Size of the private /tmp.")
@click.option("--share-net", is_flag=True, help="Share the host's network (no new net namespace).")
@click.option("--no-channel", is_flag=True, help="Do not open the channel at fd 3.")
@click.option("--pass-fd", type=click.IntRange(min=0), multiple=True, metavar="N",
              help="Hand over this process's fd N at the same number.")
@click.option("--file", "files", multiple=True, metavar="PATH[:r|w|rw|a]",
              help="Open PATH here (with warden's rights) and hand the fd over.")
@click.option("--env", multiple=True, metavar="K=V", help="Set a variable in the child.")
@click.option("--keep-env", multiple=True, metavar="K",
              help="Copy a variable from this environment.")
@click.option("--json-status", metavar="FILE|-", help="Write the status record as JSON.")
@click.option("--outer-uid", type=int,
              help="A fixed outer uid, shared by every sandbox given it (default: one each).")
@click.option("--outer-gid", type=int, help="A fixed outer gid (default: the --outer-uid).")
@click.option("--outer-uid-range", metavar="START:COUNT",
              help="As root: the ids each sandbox gets one of its own from "
                   "(default 2000000000:65536).")
@click.option("--memory-rlimit-only", is_flag=True,
              help="Accept a --memory limit held only by rlimits when no cgroup is usable.")
@click.option("-q", "--quiet", is_flag=True, help="No status line on stderr.")
@click.argument("program", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(program: tuple[str, ...], profile: str, json_status: str | None, quiet: bool,
                **options: Any) -> None:
    """Run PROGRAM in a sandbox under a profile; exit with its exit code.

    Exit codes: the program's own; 128+N when it died of signal N (159 for a
    seccomp violation, 137 when warden killed it: timeout, memory, bad
    message); 125 when the sandbox could not be set up (bad option, profile
    error, setup step refused); 126/127 when PROGRAM is not executable / not
    found inside the sandbox.

    \b
    Environment:
      WARDEN_CGROUP      cgroup v2 directory for the sandboxes' cgroups, or
                         "none" for rlimits only
      WARDEN_OUTER_UID   default for --outer-uid (and _GID)
      WARDEN_OUTER_ID_RANGE  as root: default for --outer-uid-range
      WARDEN_NO_CACHE    1: compile the profile's filter every time instead of
                         using ~/.cache/warden/seccomp
    """
    status = _run(list(program), profile, options)
    if json_status:
        text = status.to_json() + "\n"
        if json_status == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            with open(json_status, "w") as f:
                f.write(text)
    if not quiet and status.outcome.value not in ("ok", "exited"):
        click.echo(f"warden: {status.describe()}", err=True)
    # Everything is written and the sandbox is gone (reaped, cgroup removed):
    # skip the interpreter's teardown of every loaded module (~10 ms).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status.exit_code)


class _Forwarder:
    """SIGINT/SIGTERM/SIGHUP go to the program; those that arrive while the sandbox is
    still being set up are delivered as soon as it runs."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        import signal

        self.box: Sandbox | None = None
        self.pending: list[int] = []
        for name in self.SIGNALS:
            signal.signal(getattr(signal, name), self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.box is None:
            self.pending.append(signum)
        else:
            self.box.send_signal(signum)

    def attach(self, box: Sandbox) -> None:
        self.box = box
        for signum in self.pending:
            box.send_signal(signum)


def _run(argv: list[str], profile_name: str, options: dict[str, Any]) -> Status:
    forwarder = _Forwarder()
    from supervisor.sandbox import PreflightError, SetupError, SpecError, build_spec, spawn

    try:
        from profiles import ProfileError, load_profile

        try:
            prof = load_profile(profile_name)
        except ProfileError as e:
            raise OptionError(f"--profile {profile_name}: {e}") from None
        spec = build_spec(
            argv, prof,
            ro_binds=options["ro_bind"], binds=options["bind"], tmpfs=options["tmpfs"],
            chdir=options["chdir"], memory=options["memory"], max_procs=options["max_procs"],
            max_open_files=options["max_open_files"], cpu_time=options["cpu_time"],
            timeout=options["timeout"], tmp_size=options["tmp_size"],
            share_net=options["share_net"], channel=not options["no_channel"],
            pass_fds=options["pass_fd"], files=options["files"], env=options["env"],
            keep_env=options["keep_env"], outer_uid=options["outer_uid"],
            outer_gid=options["outer_gid"],
            outer_id_range=options["outer_uid_range"],
            memory_rlimit_only=options["memory_rlimit_only"],
        )
    except SpecError as e:
        raise OptionError(str(e)) from None
    # The supervisor's memory is not for anyone to read, the sandbox least of all.
    from supervisor.sandbox.self_confine import set_dumpable

    set_dumpable(False)
    try:
        box = spawn(spec)
    except PreflightError as e:
        click.echo(f"warden: {e}", err=True)
        sys.exit(PreflightError.exit_code)
    except SetupError as e:
        return e.status
    except OSError as e:
        click.echo(f"warden: {e}", err=True)
        sys.exit(125)
    forwarder.attach(box)
    return _supervise(box)


def _supervise(box: Sandbox) -> Status:
    """Wait for the sandbox while guarding its channel."""
    from supervisor.cli import start_up_done
    from supervisor.sandbox.launcher import wait_readable

    start_up_done()  # collection back on, if the `warden` group paused it

    from supervisor.sandbox.channel_guard import ChannelGuard
    from supervisor.sandbox.status import Outcome

    guard = ChannelGuard(box.channel) if box.channel is not None else None
    while True:
        st = box.service()
        if st is not None:
            return st
        watch = list(box.fds())
        if guard is not None and guard.open:
            watch.append(guard.fileno())
        left = box.time_left()
        ready = wait_readable(watch, None if left is None else max(left, 0.01))
        if guard is not None and guard.open and guard.fileno() in ready:
            problem = guard.check()
            if problem is not None:
                box.kill(Outcome.BAD_MESSAGE, problem)
