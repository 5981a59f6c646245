"""`warden run [OPTIONS] -- PROGRAM [ARGS...]`: run a program in a sandbox, report how it ended.

Plain arguments (`warden run [flags] -- PROGRAM ...`) are read by the lean
parser generated from the option declarations (sandbox/options.py: LeanParser)
and click is never imported; help, errors and anything unusual go through the
click command `run_command`, made from the same declarations when first asked
for. The sandbox, the profile loader and the compiler load when the command
runs, so `warden run` starts quickly.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

from warden.errors import EXIT_SETUP, InvalidInput
from warden.supervisor.sandbox.options import LeanParser, SandboxOptions, described, flag

if TYPE_CHECKING:
    from warden.profiles.model import Profile
    from warden.supervisor.broker import AddressRule, AuditRecord, PathRule, Policy
    from warden.supervisor.sandbox import Sandbox, SandboxSpec, Status


class OptionError(InvalidInput):
    """A bad option or profile: the sandbox cannot be set up, so EXIT_SETUP like a setup
    error. click shows it as a usage error (run_command turns it into one)."""

    exit_code = EXIT_SETUP


def _echo(message: str) -> None:
    """A line on stderr as click.echo writes it (rare paths only: it imports click)."""
    import click

    click.echo(message, err=True)


def _parse_size(text: str, option: str) -> int:
    from warden.supervisor.sandbox.spec import parse_size

    return parse_size(text, option)


# -q/--quiet: the command's one flag that is not a sandbox option.
_QUIET = {"-q": "quiet", "--quiet": "quiet"}
LEAN = LeanParser(_QUIET, {"size": _parse_size})


def _make_command() -> Any:
    """The click command: one click option per SandboxOptions field, filling the field
    of the same name, then -q and PROGRAM."""
    import click

    class _Size(click.ParamType):  # type: ignore[type-arg]
        name = "SIZE"

        def convert(self, value: Any, param: click.Parameter | None,
                    ctx: click.Context | None) -> int:
            if isinstance(value, int):
                return value
            from warden.supervisor.sandbox.spec import SpecError

            try:
                return _parse_size(str(value), flag(param.name) if param and param.name
                                   else "size")
            except SpecError as e:
                self.fail(str(e), param, ctx)

    class _UsageError(click.UsageError, InvalidInput):
        exit_code = EXIT_SETUP

    types: dict[str, Any] = {
        "size": _Size(), "count": click.IntRange(min=1), "fd": click.IntRange(min=0),
        "fds": click.IntRange(min=0), "id": int,
        "seconds": click.FloatRange(min=0, min_open=True),
    }

    def command(program: tuple[str, ...], quiet: bool, **fields: Any) -> None:
        global _deferred
        try:
            if _deferred is not None:
                # lean_main ran these arguments and met this error: say it, run nothing.
                error, _deferred = _deferred, None
                raise error
            run(list(program), quiet, SandboxOptions(**fields))
        except OptionError as e:
            raise _UsageError(str(e)) from None

    command.__doc__ = run.__doc__
    # Decorators in the order the original stack applied them (bottom up): PROGRAM, -q,
    # then the options last to first, so --help lists them as declared.
    command = click.argument("program", nargs=-1, required=True,
                             type=click.UNPROCESSED)(command)
    command = click.option(*_QUIET, "quiet", is_flag=True,
                           help="No status line on stderr.")(command)
    for name, o in reversed(described()):
        if o.kind == "api":
            continue
        decls = [d for d in (o.short, o.flag, name) if d]
        kw: dict[str, Any] = {"help": o.help, "metavar": o.metavar}
        if o.kind == "flag":
            kw["is_flag"] = True
        elif o.kind == "no-flag":
            kw.update(flag_value=False, default=True)
        else:
            kw["multiple"] = o.kind in ("texts", "fds")
            if o.kind in types:
                kw["type"] = types[o.kind]
            default = SandboxOptions.__dataclass_fields__[name].default
            if default not in (None, ()):
                kw.update(default=default, show_default=True)
        command = click.option(*decls, **kw)(command)
    return click.command("run", context_settings={"ignore_unknown_options": False})(command)


def __getattr__(name: str) -> Any:
    # run_command (the click command) is made on first use: `warden run` with plain
    # arguments never imports click.
    if name == "run_command":
        value = globals()["run_command"] = _make_command()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# An OptionError lean_main met, for run_command to raise as click's usage error.
_deferred: OptionError | None = None


def lean_main(args: list[str]) -> bool:
    """Run `warden run ARGS` without click if the lean parser reads ARGS exactly as
    click would; False if click must parse them (then nothing was done, or the
    error to show is waiting for run_command)."""
    global _deferred
    parsed = LEAN.parse(args)
    if parsed is None:
        return False
    fields, program = parsed
    quiet = bool(fields.pop("quiet", False))
    try:
        run(program, quiet, SandboxOptions(**fields))
    except OptionError as e:
        # click words it, with its usage line and exit code: it parses the same
        # arguments again and run_command raises this error instead of running.
        _deferred = e
        return False
    except (EOFError, KeyboardInterrupt):
        _echo("")
        _echo("Aborted!")  # as click's main does
        sys.exit(1)
    return True  # pragma: no cover - run() leaves through os._exit


def run(program: list[str], quiet: bool, options: SandboxOptions) -> None:
    """Run PROGRAM in a sandbox under a profile; exit with its exit code.

    Exit codes: the program's own; 128+N when it died of signal N (159 for a
    seccomp violation, 137 when warden killed it: timeout, memory, bad
    message); 125 when the sandbox could not be set up (a usage error or bad
    option, profile error, setup step refused, a host path refused); 126/127
    when PROGRAM is not executable / not found inside the sandbox.

    Host paths (--file, --json-status, bind sources) are opened with warden's
    rights under one rule: no symbolic link followed anywhere in the path,
    no waiting in open, only regular files (and directories for binds)
    unless the kind is named; see docs/host-side.md.

    \b
    Environment:
      WARDEN_CGROUP      cgroup v2 directory for the sandboxes' cgroups, or
                         "none" for rlimits only
      WARDEN_OUTER_UID   default for --outer-uid (and _GID)
      WARDEN_OUTER_ID_RANGE  as root: default for --outer-uid-range
      WARDEN_NO_CACHE    1: compile the profile's filter every time instead of
                         using ~/.cache/warden/seccomp
    """
    if options.json_status is not None and options.json_status_fd is not None:
        raise OptionError(f"{flag('json_status')} and {flag('json_status_fd')}: give one of them")
    status, out, records = _run(program, options)
    if out is not None:
        try:
            out.write(_status_json(status, records) + "\n")
        except OSError as e:
            _echo(f"warden: {out.what}: the status record could not be written: "
                  f"{e.strerror}")
            os._exit(EXIT_SETUP)
    if not quiet and status.complaints:
        _report_complaints(status, options.profile)
    if not quiet and status.outcome.value not in ("ok", "exited"):
        _report(status, options.profile)
    # Everything is written and the sandbox is gone (reaped, cgroup removed):
    # skip the interpreter's teardown of every loaded module (~10 ms).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status.exit_code)


def _report(status: Status, profile: str) -> None:
    """The end of a run that did not end well, on stderr; after a seccomp kill, the
    call as a person reads it and how to allow it."""
    if status.violation is None or status.outcome.value != "seccomp_violation":
        _echo(f"warden: {status.describe()}")
        return
    from warden.supervisor.hints import call_text, how_to_allow

    _echo(f"warden: seccomp violation: {call_text(status.violation)}; sandbox killed")
    for line in how_to_allow(status.violation, profile):
        _echo(f"warden: {line}")


def _report_complaints(status: Status, profile: str) -> None:
    """--complain: every call the profile would have killed for, and one line that
    allows them all."""
    from warden.supervisor.hints import allow_all, call_text

    for c in status.complaints:
        times = f" ({c.count} times)" if c.count > 1 else ""
        _echo(f"warden: refused (EPERM under --complain): {call_text(c)}{times}")
    for line in allow_all(status.complaints, profile):
        _echo(f"warden: {line}")


class StatusOutput:
    """Where the status record goes, opened before the sandbox starts.

    The record is written through this fd after the sandbox is gone, so a link
    or a FIFO the program plants at the path meanwhile changes nothing; and the
    fd is refused up front if the program could write to it: the same file as
    a descriptor it is handed (its stdout, above all), or a file inside one of
    its writable binds, where it could replace the record with its own.
    """

    def __init__(self, fd: int, what: str, regular: bool, owned: bool) -> None:
        self.fd, self.what, self.regular, self.owned = fd, what, regular, owned

    @classmethod
    def open(cls, spec: SandboxSpec, path: str | None, fd: int | None) -> StatusOutput | None:
        """Raises HostPathError, one sentence naming the option, on refusal."""
        import errno
        import fcntl
        import stat

        from warden.supervisor.sandbox import hostpath

        if path is None and fd is None:
            return None
        if path is None or path == "-":
            what = (f"{flag('json_status_fd')} {fd}" if path is None
                    else f"{flag('json_status')} -")
            n = 1 if fd is None else fd
            try:
                flags = fcntl.fcntl(n, fcntl.F_GETFL)
                st = os.fstat(n)
            except OSError:
                raise hostpath.HostPathError(errno.EBADF, f"{what}: fd {n} is not open in "
                                             "this process", str(n)) from None
            if flags & os.O_ACCMODE == os.O_RDONLY:
                raise hostpath.HostPathError(errno.EBADF, f"{what}: fd {n} is open for "
                                             "reading only", str(n))
            cls._refuse_shared(what, hostpath.identity(st), _handed(spec))
            return cls(n, what, False, False)
        what = f"{flag('json_status')} {path}"
        full = os.path.abspath(path)
        parent, name = os.path.split(full)
        dir_fd, dst = hostpath.open_path(parent or "/", what)
        try:
            if not stat.S_ISDIR(dst.st_mode):
                raise hostpath.HostPathError(errno.ENOTDIR, f"{what}: {parent} is not a "
                                             "directory", full)
            writable = _writable_binds(spec)
            for ident in hostpath.ancestors(dir_fd):
                if ident in writable:
                    raise hostpath.HostPathError(
                        errno.EPERM, f"{what}: refused, {full} is inside {writable[ident]}, "
                        "which the program can write, so it could replace the record; write "
                        "it outside every writable bind", full)
            out = hostpath.open_output(name, dir_fd, what, full)
        finally:
            os.close(dir_fd)
        ident = hostpath.identity(os.fstat(out))
        try:
            if ident in writable:
                raise hostpath.HostPathError(errno.EPERM, f"{what}: refused, {full} is bound "
                                             f"writable by {writable[ident]}", full)
            # After the open, so a --file of the same path that the grant would
            # create is seen too.
            cls._refuse_shared(what, ident, _handed(spec))
        except BaseException:
            os.close(out)
            raise
        return cls(out, what, True, True)

    @staticmethod
    def _refuse_shared(what: str, ident: tuple[int, int],
                       handed: dict[tuple[int, int], str]) -> None:
        import errno

        from warden.supervisor.sandbox import hostpath

        if ident in handed:
            raise hostpath.HostPathError(
                errno.EPERM, f"{what}: refused, it is the same file as the program's "
                f"{handed[ident]}, so the program could write a forged record there; use "
                f"{flag('json_status')} FILE or {flag('json_status_fd')} N with a file the "
                "program is not given",
                what)

    def write(self, text: str) -> None:
        """The whole record, from the start of the file (a regular file) or appended."""
        import select

        data = text.encode()
        try:
            if self.regular:
                os.ftruncate(self.fd, 0)
                os.lseek(self.fd, 0, os.SEEK_SET)
            while data:
                try:
                    data = data[os.write(self.fd, data):]
                except BlockingIOError:
                    # The caller's descriptor is non-blocking: wait until it drains.
                    p = select.poll()
                    p.register(self.fd, select.POLLOUT)
                    p.poll()
        finally:
            if self.owned:
                os.close(self.fd)


def _handed(spec: SandboxSpec) -> dict[tuple[int, int], str]:
    """Identity -> description of every file the program is handed a descriptor of."""
    from warden.supervisor.sandbox import hostpath

    out: dict[tuple[int, int], str] = {}
    names = ("stdin", "stdout", "stderr")
    for child_fd, source in sorted(spec.fd_map().items(), reverse=True):
        if isinstance(source, int):
            with contextlib.suppress(OSError):
                desc = names[child_fd] if child_fd < 3 else f"fd {child_fd} ({flag('pass_fds')})"
                out[hostpath.identity(os.fstat(source))] = desc
        elif not isinstance(source, str):
            try:
                fd, st = hostpath.open_path(source.path, flag("files"),
                                            follow="follow" in source.options)
            except OSError:
                continue  # not there yet (created by the grant) or refused later
            os.close(fd)
            out[hostpath.identity(st)] = f"fd {child_fd} ({flag('files')} {source.path})"
    return out


def _writable_binds(spec: SandboxSpec) -> dict[tuple[int, int], str]:
    """Identity -> description of every writable bind source."""
    from warden.supervisor.sandbox import hostpath

    out: dict[tuple[int, int], str] = {}
    for b in spec.binds:
        if b.writable:
            try:
                fd, st = hostpath.open_path(b.source, "bind")
            except OSError:
                continue  # refused when the sandbox is set up
            os.close(fd)
            out[hostpath.identity(st)] = f"the writable bind {b.source} (on {b.dest})"
    return out


class BrokerRecords:
    """The broker's audit records kept for the status record: every allowed and
    refused decision, up to MAX; the requests no rule names (each file a program
    looks at, answered by its own call) only counted. Bounded, so a program that
    opens without end cannot grow the supervisor's memory or the record."""

    MAX = 1000

    def __init__(self) -> None:
        self.kept: list[AuditRecord] = []
        self.unnamed = 0
        self.dropped = 0

    def __call__(self, record: AuditRecord) -> None:
        if record.decision == "unnamed":
            self.unnamed += 1
        elif len(self.kept) < self.MAX:
            self.kept.append(record)
        else:
            self.dropped += 1

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return {"broker": [dataclasses.asdict(r) for r in self.kept],
                "broker_unnamed": self.unnamed, "broker_dropped": self.dropped}


def _status_json(status: Status, records: BrokerRecords | None) -> str:
    """The status record; with the broker, its audit records as the list `broker`
    (and `broker_unnamed`, `broker_dropped`: counts of those not listed)."""
    if records is None:
        return status.to_json()
    import json

    return json.dumps({**status.to_dict(), **records.to_dict()}, sort_keys=True)


class _BrokerSetup:
    """The transparent broker of one `warden run`, made in the parent before the
    sandbox starts: its rules (each option's values through the rules' one parser,
    then the profile's [broker] section, which adds to them), the calls the filter
    sends to it, and its Policy (prefixes opened, names resolved now, so a bad rule
    fails before a process exists)."""

    def __init__(self, options: SandboxOptions) -> None:
        self.paths: list[PathRule] = []
        self.addresses: list[AddressRule] = []
        self.names: list[str] = []
        self.option = flag("broker_read" if options.broker_read else "broker_write"
                           if options.broker_write else "broker_connect")
        self.connect_option = flag("broker_connect")
        if self.wanted(options):
            from warden.supervisor.broker import AddressRule, PathRule

            for name, write in (("broker_read", False), ("broker_write", True)):
                for text in getattr(options, name):
                    try:
                        self.paths.append(PathRule.parse(text, write=write))
                    except ValueError as e:
                        raise OptionError(f"{flag(name)} {text}: {e}") from None
            for text in options.broker_connect:
                try:
                    self.addresses.append(AddressRule.parse(text))
                except ValueError as e:
                    raise OptionError(f"{flag('broker_connect')} {text}: {e}") from None
        self.records = BrokerRecords()
        self.policy: Policy | None = None

    @staticmethod
    def wanted(options: SandboxOptions) -> bool:
        return bool(options.broker_read or options.broker_write or options.broker_connect)

    @property
    def active(self) -> bool:
        return bool(self.paths or self.addresses)

    def add_profile(self, prof: Profile, options: SandboxOptions) -> None:
        """The profile's [broker] rules join the options' (checked by the parser
        already; again here, since a Profile may come from elsewhere)."""
        if not prof.broker:
            return
        from warden.supervisor.broker import wiring

        label = f"{flag('profile')} {options.profile} [broker]"
        if not self.active:
            self.option = label
        if not options.broker_connect:
            self.connect_option = label
        try:
            paths, addresses = wiring.profile_rules(prof.broker)
        except ValueError as e:
            raise OptionError(f"{label}: {e}") from None
        self.paths.extend(p for p in paths if p not in self.paths)
        self.addresses.extend(a for a in addresses if a not in self.addresses)

    def profile(self, prof: Profile, options: SandboxOptions) -> Profile:
        """`prof` with the brokered calls sent to user-notify."""
        import dataclasses

        from warden.supervisor.broker import wiring

        self.names = wiring.calls(paths=bool(self.paths), addresses=bool(self.addresses))
        if self.addresses and (options.share_net or not prof.namespaces.net):
            # The allowlist holds because the sandbox's own network reaches nothing: on
            # the host's, the program's own sendto() (UDP, TCP fast open) would reach
            # any address without a connect for the broker to judge.
            why = flag("share_net") if options.share_net else f"profile {prof.name}"
            raise OptionError(f"{self.connect_option}: the sandbox shares the host's "
                              f"network ({why}), where the program could reach any address "
                              "without connect(); the allowlist needs the sandbox's own "
                              f"network: drop {flag('share_net')} or use a profile that "
                              "keeps namespaces.net")

        try:
            seccomp = wiring.filter_policy(prof.seccomp, self.names, prof.name, self.option)
        except wiring.BrokerFilterError as e:
            raise OptionError(str(e)) from None
        return dataclasses.replace(prof, seccomp=seccomp)

    def build(self, sandbox_id: str) -> None:
        from warden.supervisor.broker import Policy

        try:
            self.policy = Policy.build(sandbox_id, paths=self.paths, addresses=self.addresses,
                                       on_record=self.records)
        except (OSError, ValueError) as e:
            raise OptionError(f"{self.option}: {e}") from None

    def attach(self, box: Sandbox) -> None:
        from warden.supervisor.broker import wiring

        assert self.policy is not None
        wiring.attach(box, self.policy, self.names)
        self.policy = None  # the sandbox's handle closes it

    def close(self) -> None:
        if self.policy is not None:
            self.policy.close()
            self.policy = None


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


def _run(argv: list[str], options: SandboxOptions
         ) -> tuple[Status, StatusOutput | None, BrokerRecords | None]:
    forwarder = _Forwarder()
    broker = _BrokerSetup(options)
    try:
        return _run_with(argv, options, broker, forwarder)
    finally:
        broker.close()  # unless the sandbox's handle took it over


def _run_with(argv: list[str], options: SandboxOptions, broker: _BrokerSetup,
              forwarder: _Forwarder
              ) -> tuple[Status, StatusOutput | None, BrokerRecords | None]:
    from warden.supervisor.sandbox import PreflightError, SetupError, SpecError, build_spec, spawn
    from warden.supervisor.sandbox.spec import reachable

    try:
        from warden.profiles.cache import ProfileLookup
        from warden.profiles.errors import ProfileError

        try:
            # Parsed, or from the parsed-profile cache when every file it rests on is
            # as it was (warden.profiles.cache).
            lookup = ProfileLookup(options.profile)
        except ProfileError as e:
            raise OptionError(f"{flag('profile')} {options.profile}: {e}") from None
        prof = lookup.profile
        # With `--json-status -` stdout carries the record alone.
        stdio = (0, 2, 2) if options.json_status == "-" else (0, 1, 2)
        broker.add_profile(prof, options)  # its [broker] rules add to the options'
        if broker.active:
            prof = broker.profile(prof, options)
        spec = build_spec(argv, prof, options, stdio=stdio)
        # A freshly parsed profile is kept unless this sandbox could reach the key or
        # write the cache (the filter cache's rule).
        lookup.keep(reachable(spec.binds, spec.files))
        # Before the sandbox exists, so nothing it does can change what is opened.
        out = StatusOutput.open(spec, options.json_status, options.json_status_fd)
    except SpecError as e:
        raise OptionError(str(e)) from None
    except OSError as e:
        raise OptionError(str(e)) from None
    # The supervisor's memory is not for anyone to read, the sandbox least of all.
    from warden.supervisor.sandbox.self_confine import set_dumpable

    set_dumpable(False)
    records = broker.records if broker.active else None
    if broker.active:
        # The supervisor's own id for the sandbox (never the program's word): this run.
        broker.build(f"warden-run-{os.getpid()}")
    try:
        box = spawn(spec)
    except PreflightError as e:
        _echo(f"warden: {e}")
        sys.exit(PreflightError.exit_code)
    except SetupError as e:
        return e.status, out, records
    except OSError as e:
        _echo(f"warden: {e}")
        sys.exit(EXIT_SETUP)
    if broker.active:
        broker.attach(box)
    forwarder.attach(box)
    return _supervise(box), out, records


def _supervise(box: Sandbox) -> Status:
    """Wait for the sandbox while guarding its channel."""
    from warden.supervisor.sandbox.lowlevel import wait_readable
    from warden.supervisor.startup import start_up_done

    start_up_done()  # collection back on, if the `warden` group paused it

    from warden.supervisor.channel_guard import ChannelGuard
    from warden.supervisor.sandbox.status import Outcome

    guard = ChannelGuard(box.channel) if box.channel is not None else None
    while True:
        st = box.service()
        if st is not None:
            return st
        watch = list(box.fds())
        if guard is not None and guard.open:
            watch.append(guard.fileno())
        left = box.wake_in()
        ready = wait_readable(watch, None if left is None else max(left, 0.01))
        if guard is not None and guard.open and guard.fileno() in ready:
            problem = guard.check()
            if problem is not None:
                box.kill(Outcome.BAD_MESSAGE, problem)
