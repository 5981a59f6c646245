"""The sandbox's outer ids: one validated source for every start method, and ids of its own.

Outside its user namespace a sandbox runs as an outer uid/gid. Per-user
kernel budgets are keyed by that id: fds in flight over unix sockets
(`too_many_unix_fds`: the sender's in-flight count against RLIMIT_NOFILE),
pipe buffer pages, epoll watches, and, for a user namespace the id *owns*,
every count the kernel charges up the namespace chain (inotify instances
and watches, namespaces, RLIMIT_NPROC/SIGPENDING/MSGQUEUE). Sandboxes that
share an id share those budgets with each other and with the host user of
that id, so each live sandbox gets its own:

- as root: a uid/gid from a range (default DEFAULT_RANGE; `--outer-uid-range`
  or WARDEN_OUTER_ID_RANGE), the same number for both. The sandbox's user
  namespace is created with that id as its effective id, so the namespace
  is owned by it and what the kernel charges to the owner is charged to it.
- as an ordinary user: a uid/gid from the ranges /etc/subuid and /etc/subgid
  grant, mapped by newuidmap/newgidmap (the kernel lets an ordinary user map
  only its own id). The namespace is still owned by the user, so its
  chained counts stay the user's; the namespace's own limits (userns.py)
  bound each sandbox's share.
- otherwise the shared id (the user's own, or a fixed `--outer-uid`), which
  the status names in `weakened`.

Allocation works across processes (concurrent `warden run`s and embedded
supervisors): id N is taken by holding flock(LOCK_EX) on the file N in a
directory only its owner can enter (/run/warden/ids for root), for the
sandbox's whole life, by the process that owns the handle. The lock's fd is
close-on-exec and never in the child's fd map; the init closes it before
anything else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Mapping

from warden.errors import InvalidInput, OutOfCapacity, Unavailable
from warden.supervisor.sandbox.errors import SandboxError

# As root, sandboxes get ids from this range (START, COUNT): above the ranges
# distributions, systemd and subordinate-id tools hand out, below 2^31 (ids
# from there up break programs that hold them in a signed int).
DEFAULT_RANGE = (2_000_000_000, 65536)
# The id shared where no allocation applies, as root: the `fork` start
# method's workers, and sandboxes started by the root of a user namespace
# other than the host's. No range may cover it.
SHARED_ID = 2_147_400_000
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid and chown
ROOT_LOCK_DIR = "/run/warden/ids"
NEWUIDMAP = ("/usr/bin/newuidmap", "/bin/newuidmap")
NEWGIDMAP = ("/usr/bin/newgidmap", "/bin/newgidmap")

_lock = threading.Lock()
_held: set[int] = set()  # ids this process holds (skipped without a syscall)
_accounts: tuple[frozenset[int], frozenset[int]] | None = None


class OuterIdError(SandboxError, InvalidInput, ValueError):
    """An outer id or range is invalid; the message names the option or variable."""


class IdsUnavailable(SandboxError, Unavailable, OSError):
    """No outer id could be allocated (the range is used up, or the lock directory is unsafe)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the sentence, without "[Errno N]"


class IdsExhausted(IdsUnavailable, OutOfCapacity):
    """Every outer id of the range is held by a live sandbox: try later, or widen it."""


# (Plain classes with __slots__, not NamedTuples: defining those costs more on
# `warden run`'s start-up path than everything else this module does there.)

class Choice:
    """What the caller asked for, validated: a fixed pair, or a range to allocate from."""

    __slots__ = ("fixed", "range")

    def __init__(self, fixed: tuple[int, int] | None, rng: tuple[int, int]) -> None:
        self.fixed = fixed
        self.range = rng  # (start, count)


def parse_id(text: str, name: str) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise OuterIdError(f"{name}={text!r}: not a numeric id") from None
    return value


def parse_range(text: str, name: str) -> tuple[int, int]:
    start, sep, count = text.strip().partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start, 10), int(count, 10)
    except ValueError:
        raise OuterIdError(f"{name} {text!r}: expected START:COUNT, such as "
                           f"{DEFAULT_RANGE[0]}:{DEFAULT_RANGE[1]}") from None


def _own_ids() -> tuple[set[int], set[int]]:
    ruid, euid, suid = os.getresuid()
    rgid, egid, sgid = os.getresgid()
    return {ruid, euid, suid}, {rgid, egid, sgid}


def check_id(value: int, option: str, *, gid: bool = False) -> int:
    """An unprivileged id: not 0, not (uid_t)-1, not the supervisor's own uid/gid."""
    if not 0 < value <= MAX_ID:
        raise OuterIdError(f"{option} {value}: must be an unprivileged id "
                           f"(not 0, below 4294967295)")
    uids, gids = _own_ids()
    if value in (gids if gid else uids):
        raise OuterIdError(f"{option} {value}: must differ from the supervisor's own "
                           f"{'gid' if gid else 'uid'}")
    return value


def _local_accounts() -> tuple[frozenset[int], frozenset[int]]:
    """Ids named in /etc/passwd and /etc/group (read once): a range must not hand them out."""
    global _accounts
    if _accounts is None:
        found: list[frozenset[int]] = []
        for path in ("/etc/passwd", "/etc/group"):
            ids: set[int] = set()
            try:
                with open(path, "rb") as f:
                    for line in f:
                        parts = line.split(b":")
                        if len(parts) > 2 and parts[2].strip().isdigit():
                            ids.add(int(parts[2]))
            except OSError:
                pass
            found.append(frozenset(ids))
        _accounts = (found[0], found[1])
    return _accounts


def check_range(start: int, count: int, option: str) -> tuple[int, int]:
    """A range of unprivileged ids that covers no account and none of the supervisor's ids."""
    if count < 1:
        raise OuterIdError(f"{option} {start}:{count}: COUNT must be at least 1")
    if start < 1 or start + count - 1 > MAX_ID:
        raise OuterIdError(f"{option} {start}:{count}: must lie within 1..{MAX_ID} "
                           "(never 0, nor 4294967295)")
    uids, gids = _own_ids()
    users, groups = _local_accounts()
    end = start + count
    for what, taken in (("the supervisor's own uid", uids), ("the supervisor's own gid", gids),
                        ("the shared outer id", {SHARED_ID}),
                        ("an account of /etc/passwd", users),
                        ("a group of /etc/group", groups)):
        hit = sorted(i for i in taken if start <= i < end)
        if hit:
            raise OuterIdError(f"{option} {start}:{count}: covers id {hit[0]}, {what}; "
                               "choose another range")
    return start, count


def choose(env: Mapping[str, str], outer_uid: int | None = None,
           outer_gid: int | None = None, outer_id_range: tuple[int, int] | None = None
           ) -> Choice:
    """The one reading of the outer-id settings: options first, then WARDEN_OUTER_UID,
    WARDEN_OUTER_GID and WARDEN_OUTER_ID_RANGE from `env`, each validated.

    A fixed uid without a gid (or the reverse) uses the same number for both."""
    uid = outer_uid
    gid = outer_gid
    uid_opt, gid_opt = "--outer-uid", "--outer-gid"
    if uid is None and "WARDEN_OUTER_UID" in env:
        uid, uid_opt = parse_id(env["WARDEN_OUTER_UID"], "WARDEN_OUTER_UID"), "WARDEN_OUTER_UID"
    if gid is None and "WARDEN_OUTER_GID" in env:
        gid, gid_opt = parse_id(env["WARDEN_OUTER_GID"], "WARDEN_OUTER_GID"), "WARDEN_OUTER_GID"
    fixed = None
    if uid is not None or gid is not None:
        u = check_id(uid if uid is not None else gid or 0, uid_opt if uid is not None else gid_opt)
        g = check_id(gid if gid is not None else u, gid_opt if gid is not None else uid_opt,
                     gid=True)
        fixed = (u, g)
        if os.geteuid() != 0:
            _check_user_may_map(fixed, uid_opt)
    if outer_id_range is not None:
        rng = check_range(*outer_id_range, "--outer-uid-range")
    elif "WARDEN_OUTER_ID_RANGE" in env:
        rng = check_range(*parse_range(env["WARDEN_OUTER_ID_RANGE"], "WARDEN_OUTER_ID_RANGE"),
                          "WARDEN_OUTER_ID_RANGE")
    else:
        rng = check_range(*DEFAULT_RANGE, "the default outer id range")
    return Choice(fixed, rng)


def fixed_pair(uid: int | None, gid: int | None) -> tuple[int, int] | None:
    """A spec's fixed ids as a pair (one alone sets both), or None to allocate."""
    if uid is None and gid is None:
        return None
    u = uid if uid is not None else gid
    assert u is not None
    return u, gid if gid is not None else u


def _check_user_may_map(fixed: tuple[int, int], option: str) -> None:
    sub = subordinate_ids()
    if sub is None:
        raise OuterIdError(f"{option} {fixed[0]}: as uid {os.getuid()} warden can map only "
                           "your own uid, or ids /etc/subuid and /etc/subgid grant you (none, "
                           "or newuidmap/newgidmap are missing)")
    if not (sub.uid_start <= fixed[0] < sub.uid_start + sub.size
            and sub.gid_start <= fixed[1] < sub.gid_start + sub.size):
        raise OuterIdError(f"{option} {fixed[0]}/{fixed[1]}: outside the ids /etc/subuid and "
                           f"/etc/subgid grant uid {os.getuid()}")


def forked_worker_ids(env: Mapping[str, str], shared: int = SHARED_ID
                      ) -> tuple[int, int]:
    """As root, the ids a `fork` start-method worker becomes: the fixed ids if set, else
    the shared id (validated like every other source). Forked workers share it: the
    supervisor holds no lease for them (see docs/sandbox.md)."""
    c = choose(env)
    if c.fixed is not None and os.geteuid() != 0:
        raise OuterIdError(f"WARDEN_OUTER_UID/GID {c.fixed[0]}/{c.fixed[1]}: as uid "
                           f"{os.getuid()} forked workers can only keep your own ids; "
                           "unset them")
    if c.fixed is not None:
        return c.fixed
    return check_id(shared, "the shared outer id"), check_id(shared, "the shared outer id",
                                                           gid=True)


# ------------------------------------------------------------------ the namespace's owner

_PR_GET_PDEATHSIG = 2
_PR_SET_PDEATHSIG = 1
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


class Saved:
    __slots__ = ("dumpable", "egid", "pdeathsig")

    def __init__(self, egid: int, pdeathsig: int, dumpable: int) -> None:
        self.egid, self.pdeathsig, self.dumpable = egid, pdeathsig, dumpable


def parent_assume_owner(uid: int, gid: int) -> Saved:
    """Root, right before cloning the sandbox's init: make (uid, gid) this process's
    effective ids, so the user namespace the clone creates is owned by them.

    The kernel names the namespace's owner after the creator's effective ids and
    charges the namespace's chained counts (inotify, namespaces, rlimit counts) to
    that owner in the parent namespace. The real and saved uid stay 0, so
    parent_resume() can return; no other thread may run meanwhile (the caller is
    single-threaded, or a short-lived fork)."""
    import ctypes

    from warden.supervisor.sandbox import _sys

    sig = ctypes.c_int(0)
    _sys.prctl(_PR_GET_PDEATHSIG, ctypes.addressof(sig))
    saved = Saved(os.getegid(), sig.value, _sys.prctl(_PR_GET_DUMPABLE))
    os.setresgid(-1, gid, -1)
    try:
        os.setresuid(-1, uid, -1)
    except BaseException:
        os.setresgid(-1, saved.egid, -1)
        raise
    return saved


def parent_resume(saved: Saved) -> None:
    """Undo parent_assume_owner(). Changing the effective ids cleared the parent-death signal
    and the dumpable flag (commit_creds does): both are put back as they were."""
    from warden.supervisor.sandbox import _sys

    os.setresuid(-1, 0, -1)
    os.setresgid(-1, saved.egid, -1)
    _sys.prctl(_PR_SET_DUMPABLE, saved.dumpable)
    if saved.pdeathsig:
        _sys.prctl(_PR_SET_PDEATHSIG, saved.pdeathsig)


# ------------------------------------------------------------------ subordinate ids

def _find(paths: tuple[str, ...]) -> str | None:
    return next((p for p in paths if os.access(p, os.X_OK)), None)


def _subid_range(path: str, uid: int) -> tuple[int, int] | None:
    """The first range `path` (/etc/subuid or /etc/subgid) grants `uid` (by name or number)."""
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (str(uid), name):
            continue
        if parts[1].isdigit() and parts[2].isdigit() and int(parts[2]) > 0:
            return int(parts[1]), int(parts[2])
    return None


class Subids:
    """The first ranges /etc/subuid and /etc/subgid grant: uid_start+i pairs with gid_start+i."""

    __slots__ = ("gid_start", "size", "uid_start")

    def __init__(self, uid_start: int, gid_start: int, size: int) -> None:
        self.uid_start, self.gid_start, self.size = uid_start, gid_start, size


_subids: dict[int, Subids | None] = {}


def subordinate_ids() -> Subids | None:
    """The ids an ordinary user may map (newuidmap/newgidmap present, both files granting),
    without 0 or the user's own ids; None when there are none. Read once per process
    (and uid)."""
    uid = os.getuid()
    if uid not in _subids:
        _subids[uid] = _read_subordinate_ids(uid)
    return _subids[uid]


def _read_subordinate_ids(uid: int) -> Subids | None:
    if _find(NEWUIDMAP) is None or _find(NEWGIDMAP) is None:
        return None
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return None  # newuidmap refuses a user without a name ("cannot determine your user name")
    u = _subid_range("/etc/subuid", uid)
    g = _subid_range("/etc/subgid", uid)
    if u is None or g is None:
        return None
    count = min(u[1], g[1])
    uids, gids = _own_ids()
    if any(u[0] <= i < u[0] + count for i in (0, *uids)) or \
            any(g[0] <= i < g[0] + count for i in (0, *gids)):
        return None  # a range an administrator got wrong: never map root or ourselves
    return Subids(u[0], g[0], count)


def parent_newidmap(pid: int, inner: int, uid: int, gid: int) -> None:
    """Map `inner` to (uid, gid) for `pid` with the setuid helpers (ordinary user, subids)."""
    for paths, outer, what in ((NEWUIDMAP, uid, "uid"), (NEWGIDMAP, gid, "gid")):
        prog = _find(paths)
        if prog is None:
            raise OSError(errno.ENOENT, f"new{what}map is not installed")
        child = os.posix_spawn(prog, [prog, str(pid), str(inner), str(outer), "1"],
                               {"PATH": "/usr/bin:/bin"})
        # An embedder's SIGCHLD handler may reap it first: the map itself says how it went.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)
        with open(f"/proc/{pid}/{what}_map") as f:
            if f.read().split() != [str(inner), str(outer), "1"]:
                raise OSError(errno.EPERM, f"new{what}map {pid} {inner} {outer} 1 failed")


# ------------------------------------------------------------------ allocation

class Lease:
    """The outer ids of one sandbox, held until release().

    mode: "range" (root, allocated), "subid" (ordinary user, allocated),
    "fixed" (explicit ids, shared), "own" (the invoking user's ids, shared),
    "shared" (root of a user namespace other than the host's: the shared id)."""

    __slots__ = ("fd", "gid", "mode", "owner", "uid")

    def __init__(self, uid: int, gid: int, mode: str, fd: int = -1) -> None:
        self.uid, self.gid, self.mode, self.fd = uid, gid, mode, fd
        self.owner = os.getpid()

    def release(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            # LOCK_UN first, so that a forked copy of this fd elsewhere does not keep
            # the id taken. Only by the process that took it: the lock belongs to the
            # open file, which a forked child's copy shares, and a child dropping its
            # copy of the handle must not free its parent's id.
            if self.owner == os.getpid():
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            with _lock:
                _held.discard(self.uid)

    def __repr__(self) -> str:
        return f"<Lease {self.mode} {self.uid}:{self.gid}>"


_initial: bool | None = None


def _initial_user_namespace() -> bool:
    """Whether this process is in the host's user namespace (identity map of every id)."""
    global _initial
    if _initial is None:
        try:
            with open("/proc/self/uid_map") as f:
                _initial = f.read().split() == ["0", "0", "4294967295"]
        except OSError:
            _initial = False
    return _initial


def _lock_dir() -> str:
    if os.geteuid() == 0:
        return ROOT_LOCK_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = runtime if runtime.startswith("/") else "/tmp"
    return os.path.join(base, f"warden-ids-{os.geteuid()}")


def _open_lock_dir(path: str) -> int:
    """The lock directory, created 0700 if missing, refused unless it is ours alone."""
    parent = os.path.dirname(path)
    if os.geteuid() == 0:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise IdsUnavailable(e.errno or errno.EIO,
                             f"outer id lock directory {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise IdsUnavailable(errno.EPERM, f"outer id lock directory {path}: must belong to uid "
                             f"{os.geteuid()} with mode 0700; remove it and try again")
    return fd


_dir: tuple[int, int, str] | None = None  # (pid, fd, path) of the open lock directory


def _lock_dir_fd() -> tuple[int, str]:
    """The lock directory, opened once per process (close-on-exec; a sandbox's init closes
    every descriptor it was not given, and forked workers theirs)."""
    global _dir
    path = _lock_dir()
    with _lock:
        if _dir is None or _dir[0] != os.getpid() or _dir[2] != path:
            _dir = (os.getpid(), _open_lock_dir(path), path)
        return _dir[1], path


def _open_lock(dfd: int, name: str) -> int | None:
    """The lock file `name` in the lock directory, created if missing; None when what is
    there is no regular file of ours with one link (a link, a FIFO, a directory, a
    hard link to some other file: left by someone who could write there, never
    followed, opened for writing or trusted as a lock). Skipping that id keeps every
    other id usable, where failing would make one planted name stop every start."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK | os.O_NOCTTY, 0o600, dir_fd=dfd)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        return None
    return fd


def _allocate(start: int, count: int, gid_start: int, mode: str) -> Lease:
    """The lowest id of the range no live sandbox holds, in any process."""
    dfd, _path = _lock_dir_fd()
    for uid in range(start, start + count):
        with _lock:
            if uid in _held:
                continue
            _held.add(uid)
        fd = _open_lock(dfd, str(uid))
        if fd is None:  # not a lock file of ours: that id is not handed out
            with _lock:
                _held.discard(uid)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            with _lock:
                _held.discard(uid)
            continue
        return Lease(uid, gid_start + (uid - start), mode, fd)
    raise IdsExhausted(errno.EAGAIN, f"all {count} outer ids from {start} are in use by live "
                         "sandboxes; widen the range with --outer-uid-range START:COUNT")


def lease(fixed: tuple[int, int] | None, id_range: tuple[int, int]) -> Lease:
    """The outer ids for one new sandbox (parent side, before fork)."""
    if fixed is not None:  # a spec made by hand is checked like one build_spec made
        fixed = (check_id(fixed[0], "--outer-uid"), check_id(fixed[1], "--outer-gid", gid=True))
    if os.geteuid() == 0:
        if fixed is not None:
            return Lease(*fixed, "fixed")
        if not _initial_user_namespace():
            # Root of a user namespace: only the ids mapped into it exist, and the
            # host's lock directory is out of reach. The shared id, named as such.
            return Lease(SHARED_ID, SHARED_ID, "shared")
        return _allocate(id_range[0], id_range[1], id_range[0], "range")
    if fixed is not None:
        _check_user_may_map(fixed, "--outer-uid")
        return Lease(*fixed, "fixed")
    sub = subordinate_ids()
    if sub is None:
        return Lease(os.geteuid(), os.getegid(), "own")
    return _allocate(sub.uid_start, sub.size, sub.gid_start, "subid")
