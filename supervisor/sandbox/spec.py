"""The one frozen description of a sandbox, built by both `warden run` and the Python API.

`build_spec()` merges a profile with overrides, validates everything a user
can get wrong, and compiles the seccomp filter, all in the parent and before
any fork, so a bad option fails with a sentence naming the option (and the
option it conflicts with) instead of a half-built child.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from warden.errors import InvalidInput
from warden.profiles.model import MAX_DATA_FILE_BYTES, SHM_DEST, Bind, Profile, Tmpfs, reserved_dest
from warden.supervisor.sandbox import ids
from warden.supervisor.sandbox.errors import SandboxError
from warden.supervisor.sandbox.fds import parse_grant
from warden.supervisor.sandbox.options import SandboxOptions, flag

# The outer id that sandboxes share when they get none of their own (see
# supervisor/sandbox/ids.py, which allocates one per sandbox).
DEFAULT_OUTER_ID = ids.SHARED_ID

CHANNEL_FD = 3

# Built-in caps for limits neither the profile nor the caller set.
DEFAULT_MEMORY = 2 << 30
DEFAULT_PROCESSES = 256
DEFAULT_OPEN_FILES = 1024

BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
DEFAULT_SHM_SIZE = 64 << 20
MAX_DATA_BYTES = 16 << 20  # one --ro-bind-data file, read into memory before the fork
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(SandboxError, InvalidInput, ValueError):
    """A sandbox option is invalid or conflicts with another; the message names them."""


@dataclass(frozen=True)
class FileGrant:
    """A file the parent opens with its own rights and hands to the child at `fd`."""

    path: str
    mode: str  # r, w, rw, a
    fd: int
    options: tuple[str, ...] = ()  # fifo, device, follow: see fds.parse_grant


@dataclass(frozen=True)
class SandboxSpec:
    """The one frozen description of a sandbox; build_spec() makes and validates it."""

    argv: tuple[str, ...]
    profile: str
    seccomp_filter: bytes  # raw struct sock_filter[] for the native architecture
    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[Tmpfs, ...] = ()
    # (dest, contents) of read-only files made from data (--ro-bind-data), (dest,
    # target) of symbolic links, and directories, placed in the new root.
    data_files: tuple[tuple[str, bytes], ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()
    dirs: tuple[str, ...] = ()
    tmp_size_bytes: int = 64 << 20
    # The private /dev/shm tmpfs every sandbox gets (POSIX semaphores and shared memory).
    shm_size_bytes: int = DEFAULT_SHM_SIZE
    chdir: str = "/"
    share_net: bool = False
    memory_bytes: int = DEFAULT_MEMORY
    processes: int = DEFAULT_PROCESSES
    open_files: int = DEFAULT_OPEN_FILES
    cpu_time_seconds: float | None = None
    wall_time_seconds: float | None = None
    env: tuple[tuple[str, str], ...] = ()
    channel: bool = True
    pass_fds: tuple[int, ...] = ()
    files: tuple[FileGrant, ...] = ()
    stdio: tuple[int, int, int] = (0, 1, 2)  # caller fds that become the child's 0, 1, 2
    # Outer ids (ids.py): fixed ones, shared with every sandbox given them, or
    # None to allocate this sandbox its own from outer_id_range (root) or from
    # the ranges /etc/subuid and /etc/subgid grant (an ordinary user).
    outer_uid: int | None = None
    outer_gid: int | None = None
    outer_id_range: tuple[int, int] = ids.DEFAULT_RANGE
    # /proc/sys/user limits of the sandbox's user namespace raised above the
    # defaults (userns.DEFAULT_LIMITS), e.g. (("max_user_namespaces", 4096),).
    userns_limits: tuple[tuple[str, int], ...] = ()
    # The caller accepted a memory limit held by rlimits alone (no cgroup).
    memory_rlimit_only: bool = False
    hostname: str = "warden"
    landlock: bool = True
    # /dev/null over /proc/keys and /proc/key-users (they list every key of the uid the
    # sandbox maps). Off for a sandbox whose processes mount their own procfs (the
    # zygote): the kernel refuses a new procfs where the old one is partly covered.
    mask_proc_keys: bool = True
    notify: bool = field(default=True)  # filter reports kill actions to the supervisor
    # Answer the calls the filter reports with EPERM and record them all, instead of
    # killing the sandbox at the first (--complain).
    complain: bool = False

    def fd_map(self) -> dict[int, int | FileGrant | str]:
        """{child_fd: source}: a caller fd, a file to open, or "channel"."""
        m: dict[int, int | FileGrant | str] = {0: self.stdio[0], 1: self.stdio[1],
                                              2: self.stdio[2]}
        if self.channel:
            m[CHANNEL_FD] = "channel"
        for fd in self.pass_fds:
            m[fd] = fd
        for f in self.files:
            m[f.fd] = f
        return m


def parse_size(text: str, option: str) -> int:
    """'512M', '2G', '65536' -> bytes (warden.profiles.parser.size_bytes, the one syntax)."""
    from warden.profiles.parser import size_bytes  # here: `warden run` may not need the parser

    n = size_bytes(text)
    if n is None:
        raise SpecError(f"{option} {text!r}: expected a size such as 512M, 2G or 65536")
    return n


def split_bind(text: str, option: str) -> tuple[str, str]:
    """'SRC[:DST]' -> (absolute source, destination)."""
    if not text:
        raise SpecError(f"{option}: empty path")
    src, sep, dst = text.partition(":")
    if not sep:
        dst = src
    return os.path.abspath(src), dst


def _clean_dest(dest: str, what: str, tmpfs: bool = False) -> str:
    if not dest.startswith("/"):
        raise SpecError(f"{what}: destination {dest!r} must be an absolute path")
    if ".." in dest.split("/"):
        raise SpecError(f"{what}: destination {dest!r} must not contain '..'")
    clean = os.path.normpath(dest)
    if clean.startswith("//"):
        clean = clean[1:]
    if clean == "/":
        raise SpecError(f"{what}: cannot replace the sandbox root '/'")
    r = reserved_dest(clean, tmpfs)
    if r is not None:
        hint = f"; a tmpfs may replace {SHM_DEST}" if r == "/dev" else ""
        raise SpecError(f"{what}: {clean} is reserved (the sandbox mounts its own {r}){hint}")
    return clean


def _env(profile: Profile, keep_env: Sequence[str], set_env: Sequence[str],
         source_env: Mapping[str, str], extra: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {"PATH": BASE_PATH, "HOME": "/tmp",
                           "LANG": source_env.get("LANG", "C.UTF-8")}
    if "TERM" in source_env:
        env["TERM"] = source_env["TERM"]
    for k in profile.environment.keep:
        if k in source_env:
            env[k] = source_env[k]
    for k, v in profile.environment.set:
        env[k] = v
    for k in keep_env:
        if not _ENV_NAME.match(k):
            raise SpecError(f"{flag('keep_env')} {k!r}: not a variable name")
        if k in source_env:
            env[k] = source_env[k]
    for item in set_env:
        k, sep, v = item.partition("=")
        if not sep or not _ENV_NAME.match(k):
            raise SpecError(f"{flag('env')} {item!r}: expected NAME=VALUE")
        env[k] = v
    for k, v in extra.items():
        if k in env and k.startswith("WARDEN_"):
            raise SpecError(f"{flag('env')} {k}: {k} is set by warden itself")
        env[k] = v
    return tuple(env.items())


_NONE = SandboxOptions()


def _positive(value: float | int | None, option: str) -> None:
    if value is not None and value <= 0:
        raise SpecError(f"{option} {value}: must be greater than zero")


def build_spec(
    argv: Sequence[str],
    profile: Profile,
    options: SandboxOptions | None = None,
    *,
    seccomp_filter: bytes | None = None,
    stdio: tuple[int, int, int] = (0, 1, 2),
    source_env: Mapping[str, str] | None = None,
    **changes: Any,
) -> SandboxSpec:
    """Merge `profile` with `options` into a validated SandboxSpec.

    `options` (a SandboxOptions, default none set) and `changes`, keywords named
    like its fields (`ro_binds=`, `memory=`, `timeout=`, ...) that replace them,
    are what `warden run`'s flags and a serve pool's keys give; errors name
    each by its flag. `profile` is the loaded profile (options.profile is the
    name warden run loads it by). `seccomp_filter` replaces the profile's
    compiled filter (tests, custom filters); by default the profile's policy is
    compiled here, with kill actions turned into user-notify so the supervisor
    observes violations. `stdio`: the caller's fds that become the child's
    0, 1, 2; `source_env`: where --keep-env copies from (default os.environ).
    """
    o = replace(options or SandboxOptions(), **changes) if changes else options or _NONE
    if not argv:
        raise SpecError("no program given: warden run [OPTIONS] -- PROGRAM [ARGS...]")
    src_env = dict(os.environ if source_env is None else source_env)

    # Namespaces: everything is new; only the network may be shared.
    ns = profile.namespaces
    for name in ("user", "pid", "mount", "ipc", "uts", "cgroup"):
        if not getattr(ns, name):
            raise SpecError(f"profile {profile.name}: namespaces.{name} = false is not "
                            "supported; only the network namespace can be shared")
    share = o.share_net or not ns.net

    # Filesystem.
    all_binds: list[tuple[Bind, str]] = [(b, f"profile {profile.name} bind {b.source}")
                                         for b in profile.filesystem.binds]
    for opt, items, writable, owned in ((flag("ro_binds"), o.ro_binds, False, False),
                                        (flag("binds"), o.binds, True, False),
                                        (flag("owned_ro_binds"), o.owned_ro_binds, False, True),
                                        (flag("owned_binds"), o.owned_binds, True, True)):
        for text in items:
            src, dst = split_bind(text, f"{opt} {text}")
            all_binds.append((Bind(src, dst, writable=writable, owned=owned), f"{opt} {text}"))
    seen: dict[str, str] = {"/tmp": "the built-in /tmp"}
    shm = DEFAULT_SHM_SIZE
    out_binds: list[Bind] = []
    for b, what in all_binds:
        dest = _clean_dest(b.dest, what)
        if not os.path.isabs(b.source):
            raise SpecError(f"{what}: source {b.source!r} must be an absolute path")
        if not os.path.lexists(b.source):
            if b.optional:
                continue
            raise SpecError(f"{what}: source {b.source} does not exist")
        if dest in seen:
            raise SpecError(f"{what}: destination {dest} is already used by {seen[dest]}")
        seen[dest] = what
        out_binds.append(Bind(b.source, dest, writable=b.writable, owned=b.owned))
    out_tmpfs: list[Tmpfs] = []
    for t in profile.filesystem.tmpfs:
        what = f"profile {profile.name} tmpfs {t.dest}"
        dest = _clean_dest(t.dest, what, tmpfs=True)
        if dest in seen:
            raise SpecError(f"{what}: destination {dest} is already used by {seen[dest]}")
        seen[dest] = what
        if dest == SHM_DEST:  # replaces the built-in one: its size
            shm = t.size_bytes
            continue
        out_tmpfs.append(Tmpfs(dest, t.size_bytes))
    for text in o.tmpfs:
        what = f"{flag('tmpfs')} {text}"
        dest = _clean_dest(text, what, tmpfs=True)
        if dest in seen:
            hint = f"; use {flag('tmp_size')} to size it" if dest == "/tmp" else ""
            raise SpecError(f"{what}: destination {dest} is already used by {seen[dest]}{hint}")
        seen[dest] = what
        if dest == SHM_DEST:  # the built-in one, at its default size
            continue
        out_tmpfs.append(Tmpfs(dest))
    data_files, symlinks, dirs = _placed(o, profile, seen)
    cwd = o.chdir if o.chdir is not None else profile.filesystem.chdir
    if not cwd.startswith("/"):
        raise SpecError(f"{flag('chdir')} {cwd!r}: must be an absolute path inside the sandbox")

    # Limits: option, then profile, then the built-in cap.
    lim = profile.limits
    for name in ("memory", "max_procs", "max_open_files", "cpu_time", "timeout", "tmp_size"):
        _positive(getattr(o, name), flag(name))
    mem = o.memory or lim.memory_bytes or DEFAULT_MEMORY
    procs = o.max_procs or lim.processes or DEFAULT_PROCESSES
    nofile = o.max_open_files or lim.open_files or DEFAULT_OPEN_FILES
    tmp = o.tmp_size or profile.filesystem.tmp_size_bytes

    # fds: 0-2 stdio, 3 the channel, then --pass-fd, then --file at the next free numbers.
    used: dict[int, str] = {0: "stdin", 1: "stdout", 2: "stderr"}
    if o.channel:
        used[CHANNEL_FD] = "the channel"
    pfds: list[int] = []
    for fd in o.pass_fds:
        if fd in used:
            hint = (f"; add {flag('channel')} to free it" if fd == CHANNEL_FD and o.channel
                    else "")
            raise SpecError(f"{flag('pass_fds')} {fd}: fd {fd} is already {used[fd]}{hint}")
        try:
            os.fstat(fd)
        except OSError:
            raise SpecError(f"{flag('pass_fds')} {fd}: not an open file descriptor in this "
                            "process") from None
        used[fd] = f"passed by {flag('pass_fds')} {fd}"
        pfds.append(fd)
    grants: list[FileGrant] = []
    nxt = max(used) + 1
    for text in o.files:
        path, mode, kinds = parse_grant(text)
        if mode == "r" and not os.path.exists(path):
            raise SpecError(f"{flag('files')} {text}: {path} does not exist")
        if os.path.isdir(path):
            raise SpecError(f"{flag('files')} {text}: {path} is a directory")
        grants.append(FileGrant(path, mode, nxt, kinds))
        nxt += 1
    if nxt + 1 > nofile:
        raise SpecError(f"{flag('max_open_files')} {nofile}: too low for the {nxt} fds handed "
                        "to the child")
    for i, fd in enumerate(stdio):
        try:
            os.fstat(fd)
        except OSError:
            raise SpecError(f"{('stdin', 'stdout', 'stderr')[i]}: fd {fd} is not open") from None

    extra: dict[str, str] = {}
    if o.channel:
        extra["WARDEN_CHANNEL_FD"] = str(CHANNEL_FD)
    if grants:
        extra["WARDEN_FILES"] = " ".join(f"{g.fd}:{g.path}" for g in grants)
    environment = _env(profile, o.keep_env, o.env, src_env, extra)

    # Outer identity: one validated reading of options and environment (ids.py).
    try:
        id_range = o.outer_id_range
        if isinstance(id_range, str):
            id_range = ids.parse_range(id_range, flag("outer_id_range"))
        outer = ids.choose(src_env, o.outer_uid, o.outer_gid, id_range)
    except ids.OuterIdError as e:
        raise SpecError(str(e)) from None
    ns_limits = _userns_limits(o.userns_limits or {})
    owned_writable = [b for b in out_binds if b.owned and b.writable]
    _owned_writable_limits(owned_writable, ns_limits)
    if o.memory and not o.memory_rlimit_only:
        _require_memory_cgroup(o.memory)

    if seccomp_filter is None:
        from warden.profiles.cache import cached_compile

        # What the sandbox can reach decides whether the cache may be used (warden.profiles.cache).
        seccomp_filter = cached_compile(
            profile.seccomp, kill_as_notify=True,
            reachable=reachable(out_binds, grants))
    from warden.supervisor.sandbox.seccomp import allows_execve, problem, uses_notify

    bad = problem(seccomp_filter)
    if bad:
        raise SpecError(f"profile {profile.name}: seccomp filter: {bad}")
    if allows_execve(seccomp_filter) is False:
        raise SpecError(f"profile {profile.name}: its seccomp filter refuses execve, and the "
                        "filter is loaded right before the program is executed; choose a "
                        "profile that allows execve (such as default)")

    return SandboxSpec(
        argv=tuple(argv), profile=profile.name, seccomp_filter=seccomp_filter,
        binds=tuple(out_binds), tmpfs=tuple(out_tmpfs), data_files=data_files,
        symlinks=symlinks, dirs=dirs, tmp_size_bytes=tmp, shm_size_bytes=shm, chdir=cwd,
        share_net=share, memory_bytes=mem, processes=procs, open_files=nofile,
        cpu_time_seconds=o.cpu_time or lim.cpu_time_seconds,
        wall_time_seconds=o.timeout or lim.wall_time_seconds, env=environment,
        channel=o.channel, pass_fds=tuple(pfds), files=tuple(grants), stdio=stdio,
        outer_uid=outer.fixed[0] if outer.fixed else None,
        outer_gid=outer.fixed[1] if outer.fixed else None, outer_id_range=outer.range,
        userns_limits=ns_limits, memory_rlimit_only=o.memory_rlimit_only,
        notify=uses_notify(seccomp_filter), complain=_complain(o.complain, seccomp_filter),
    )


def reachable(binds: Sequence[Bind], grants: Sequence[FileGrant]
              ) -> list[tuple[str, bool, bool]]:
    """What a sandbox with these binds and --file grants can reach on the host, as the
    caches' rule asks it (warden.profiles.cache): (host path, writable, as the owner),
    the owner's rights being an owned bind's and every grant's (warden opens it)."""
    return ([(b.source, b.writable, b.owned) for b in binds]
            + [(g.path, g.mode != "r", True) for g in grants])


def _owned_writable_limits(binds: Sequence[Bind], ns_limits: tuple[tuple[str, int], ...]
                           ) -> None:
    """Here, before anything starts, the check the launch makes again on the final
    spec (seccomp.check_owned_writable)."""
    from warden.supervisor.sandbox.seccomp import GuardError, check_owned_writable

    try:
        check_owned_writable(tuple((b.source, b.dest) for b in binds), ns_limits)
    except GuardError as e:
        raise SpecError(str(e)) from None


def _complain(complain: bool, seccomp_filter: bytes) -> bool:
    from warden.supervisor.sandbox.seccomp import uses_notify

    if complain and not uses_notify(seccomp_filter):
        raise SpecError(f"{flag('complain')}: the seccomp filter given reports no call to "
                        "the supervisor (it was compiled without kill_as_notify)")
    return complain


def _placed(o: SandboxOptions, profile: Profile, seen: dict[str, str]) -> tuple[
        tuple[tuple[str, bytes], ...], tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The profile's data files, links and directories (filesystem.data-files, symlinks,
    dirs), then --ro-bind-data, --symlink and --dir, checked alike; each fd's data
    read here, once."""
    def claim(dest: str, what: str) -> str:
        clean = _clean_dest(dest, what)
        if clean in seen:
            raise SpecError(f"{what}: destination {clean} is already used by {seen[clean]}")
        seen[clean] = what
        return clean

    fs, name = profile.filesystem, f"profile {profile.name}"
    data: list[tuple[str, bytes]] = []
    for f in fs.data_files:
        what = f"{name} data file {f.dest}"
        contents = f.contents.encode()
        if len(contents) > MAX_DATA_FILE_BYTES:
            raise SpecError(f"{what}: more than {MAX_DATA_FILE_BYTES >> 20}M of data; bind a "
                            "file instead")
        data.append((claim(f.dest, what), contents))
    links: list[tuple[str, str]] = []
    for link in fs.symlinks:
        what = f"{name} symlink {link.dest}"
        if not link.target or "\0" in link.target:
            raise SpecError(f"{what}: the target must be a non-empty path with no NUL byte")
        links.append((claim(link.dest, what), link.target))
    dirs = [claim(d, f"{name} dir {d}") for d in fs.dirs]
    for text in o.ro_bind_data:
        what = f"{flag('ro_bind_data')} {text}"
        num, sep, dest = text.partition(":")
        if not sep or not num.isdigit():
            raise SpecError(f"{what}: expected FD:DEST (an fd number of this process, and a "
                            "path inside the sandbox)")
        data.append((claim(dest, what), _read_data(int(num), what)))
    for text in o.symlinks:
        what = f"{flag('symlinks')} {text}"
        target, sep, dest = text.rpartition(":")
        if not sep or not target or "\0" in target:
            raise SpecError(f"{what}: expected TARGET:DEST")
        links.append((claim(dest, what), target))
    dirs.extend(claim(d, f"{flag('dirs')} {d}") for d in o.dirs)
    return tuple(data), tuple(links), tuple(dirs)


def _read_data(fd: int, what: str) -> bytes:
    """All of fd's data from its offset to its end (the caller asked for exactly that fd)."""
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > MAX_DATA_BYTES:
                raise SpecError(f"{what}: more than {MAX_DATA_BYTES >> 20}M of data; bind a "
                                f"file with {flag('ro_binds')} instead")
            chunks.append(chunk)
    except OSError as e:
        raise SpecError(f"{what}: fd {fd}: {e.strerror}") from None
    return b"".join(chunks)


def _userns_limits(values: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    from warden.supervisor.sandbox.userns import DEFAULT_LIMITS

    for name, value in values.items():
        if name not in DEFAULT_LIMITS:
            raise SpecError(f"userns_limits {name!r}: not a limit of /proc/sys/user "
                            f"(one of {', '.join(sorted(DEFAULT_LIMITS))})")
        if not isinstance(value, int) or not 0 <= value < 2**31:
            raise SpecError(f"userns_limits {name}={value!r}: expected 0..2147483647")
    return tuple(sorted(values.items()))


def _require_memory_cgroup(memory: int) -> None:
    """A memory limit the caller asked for must be enforced as one: by a cgroup."""
    from warden.supervisor.sandbox.limits import available_mechanism

    if available_mechanism() == "rlimit":
        raise SpecError(
            f"{flag('memory')} {memory}: no usable cgroup here (cgroup v2 needs a delegated "
            "subtree, cgroup v1 needs root; WARDEN_CGROUP=none turns them off), so the limit would "
            f"bind only each process's address space; add {flag('memory_rlimit_only')} "
            "(memory_rlimit_only=True) to accept that, or run where warden can create a cgroup")
