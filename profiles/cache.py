"""A per-user cache of compiled and verified seccomp filters (and of parsed profiles, at
the end of this module), authenticated with a key.

`compile_policy` checks every filter it builds in our own BPF interpreter
(that check caught a real libseccomp bug), which costs 10-17 ms per compile.
The result depends only on the flattened policy, `kill_as_notify`, the
libseccomp version and native architecture, and warden's compiler, so
`cached_compile` names a file after a hash of exactly those and keeps the
verified bytes in $XDG_CACHE_HOME/warden/seccomp (default ~/.cache/warden/seccomp).

A sandbox may have been given a writable bind of that directory (an earlier
one rewrote an entry as a one-instruction RET_ALLOW filter and recomputed its
plain digest, and every later run went unfiltered). So each entry carries a
keyed BLAKE2b MAC, and the key lives elsewhere, in
$XDG_STATE_HOME/warden/cache.key (default ~/.local/state/warden/cache.key):
32 random bytes, created 0600 with O_EXCL|O_NOFOLLOW in a 0700 directory of
ours. Both directories are opened once and checked through that fd (a real
directory owned by us, no group/other access), every file in them likewise
(regular, ours, 0600, one link), and entries are written atomically
(temporary file + rename).

What a run's sandbox can reach decides whether the cache is used at all:

- a writable bind (or --file) at, above or inside the cache directory: the
  cache is neither read nor written for that run;
- any bind or --file of the key or a directory above it: the same, and
  since the sandbox would see the key, the key is discarded before the
  sandbox starts and no new one is made while that supervisor lives (a note
  in the key directory names it). As root a plain bind does not expose it
  (sandboxes run as another uid, which cannot open root's 0600 key), but an
  owned bind (on which the source's owner, root, is the sandbox's uid) and a
  --file grant (opened with root's rights) do, and discard it likewise.

An entry that exists but fails any check is never used: a CacheWarning names
it, the filter is compiled afresh and the entry replaced. A missing or
unusable key means no cache; a key that is not ours or not private is warned
about. Set WARDEN_NO_CACHE=1 to bypass the cache entirely.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from warden.profiles.model import SeccompPolicy

# Paths are handled as strings (os.path): `import pathlib` would cost `warden run` more
# than everything this module does on a hit. Every function takes a str or a Path.
if TYPE_CHECKING:
    from pathlib import Path
    from typing import TypeAlias

    from warden.profiles.model import Profile

    Where: TypeAlias = "str | os.PathLike[str]"
    # What a sandbox reaches: (host path, writable), or (host path, writable, as_owner)
    # where as_owner says it acts there with the owner's rights, not its own uid's: an
    # owned (idmapped) bind, whose source's owner is the sandbox's uid, or a --file
    # grant, which warden opens with its own rights.
    Reach: TypeAlias = "tuple[str, bool] | tuple[str, bool, bool]"

try:  # CPython's built-in module: `import hashlib` loads OpenSSL first (~2 ms)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other interpreters
    from hashlib import blake2b

MAGIC = b"warden-bpf-cache 3\n"
DISABLE_VAR = "WARDEN_NO_CACHE"
KEY_NAME = "cache.key"
KEY_BYTES = 32
# Supervisors whose sandboxes could see the key directory, one "pid starttime" a line.
EXPOSED_NAME = "exposed"
_SOURCES = ("compiler.py", "bpf.py", "syscalls.py", "libseccomp.py", "model.py", "cache.py")


# Parsed profiles share the directory and the key; their own magic and MAC person, so
# neither kind of entry can be passed off as the other.
PROFILE_MAGIC = b"warden-profile-cache 1\n"
_KINDS = {"filter": (MAGIC, b"warden-bpf"), "profile": (PROFILE_MAGIC, b"warden-profile")}
_PROFILE_SOURCES = ("loader.py", "parser.py", "probe.py", "constants.py", "argwidth.py",
                    "errors.py", "locator.py")


class CacheWarning(UserWarning):
    """Something in the filter cache was not as warden left it; it was not used."""


def _warn(message: str) -> None:
    warnings.warn(f"warden: {message}", CacheWarning, stacklevel=3)


def _xdg(var: str, fallback: str) -> str | None:
    base = os.environ.get(var)
    if not base or not os.path.isabs(base):
        home = os.environ.get("HOME")
        if not home or not os.path.isabs(home):
            return None
        base = os.path.join(home, fallback)
    return os.path.join(os.path.normpath(base), "warden")


def _cache_dir() -> str | None:
    base = _xdg("XDG_CACHE_HOME", ".cache")
    return None if base is None else os.path.join(base, "seccomp")


def _profiles_dir() -> str | None:
    base = _xdg("XDG_CACHE_HOME", ".cache")
    return None if base is None else os.path.join(base, "profiles")


def _key_path() -> str | None:
    base = _xdg("XDG_STATE_HOME", os.path.join(".local", "state"))
    return None if base is None else os.path.join(base, KEY_NAME)


def cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/warden/seccomp (default ~/.cache/warden/seccomp); None without a home."""
    from pathlib import Path

    where = _cache_dir()
    return None if where is None else Path(where)


def key_path() -> Path | None:
    """$XDG_STATE_HOME/warden/cache.key (default ~/.local/state/warden/cache.key)."""
    from pathlib import Path

    where = _key_path()
    return None if where is None else Path(where)


def enabled() -> bool:
    return os.environ.get(DISABLE_VAR, "") in ("", "0")


def _hash_sources(h: blake2b, names: Iterable[str]) -> None:
    """Add each of this package's source files `names` (name and contents) to `h`."""
    here = os.path.dirname(os.path.realpath(__file__))
    for name in names:
        with open(os.path.join(here, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())


@functools.cache
def _toolchain() -> bytes | None:
    """What, besides the policy, decides the filter: libseccomp (version, native
    architecture) and our compiler's code. None if any of it cannot be read."""
    from warden.profiles import libseccomp

    try:
        h = blake2b(MAGIC, digest_size=32)
        major, minor, micro = libseccomp.version()
        h.update(f"libseccomp {major}.{minor}.{micro} arch {libseccomp.native_arch():#x}\n"
                 .encode())
        _hash_sources(h, _SOURCES)
    except (OSError, AttributeError, RuntimeError):
        return None
    return h.digest()


def policy_key(policy: SeccompPolicy, kill_as_notify: bool) -> str | None:
    """Hash of the flattened policy (rule origins left out) and everything else that
    matters; None when the toolchain cannot be identified (then nothing is cached)."""
    toolchain = _toolchain()
    if toolchain is None:
        return None
    rules = tuple((r.syscall, r.action, r.conditions) for r in policy.rules)
    text = repr((policy.default_action, policy.bad_arch_action, rules, kill_as_notify))
    return blake2b(toolchain + text.encode(), digest_size=32).hexdigest()


def _mac(mac_key: bytes, name: str, code: bytes, magic: bytes = MAGIC,
         person: bytes = b"warden-bpf") -> str:
    h = blake2b(key=mac_key, digest_size=32, person=person)
    h.update(magic + name.encode() + b"\n" + code)
    return h.hexdigest()


# ---- private directories and files --------------------------------------------------

def _open_private_dir(where: Where, *, create: bool = False, warn: bool = True) -> int | None:
    """An fd for `path` if it is a real directory of ours with no group/other access.

    Later steps work relative to this fd, so the directory checked is the
    one used even if someone renames things around it meanwhile. With
    `create`, missing directories are made 0700 first.
    """
    path = os.fspath(where)
    if create:
        try:
            # As Path.mkdir(0o700, parents=True): 0700 for the parent, the umask above it.
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        except OSError:
            return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if warn and e.errno in (errno.ELOOP, errno.ENOTDIR):
            _warn(f"{path} is not a directory (a symlink?); the filter cache is not used")
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        if warn:
            _warn(f"{path} is not a private directory of uid {os.geteuid()} (owner, or group/"
                  "other access); the filter cache is not used")
        return None
    return fd


def _read_private(dfd: int, name: str, limit: int) -> tuple[bytes | None, str]:
    """(content, "") of a private regular file of ours, or (None, why); why is "" if absent."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dfd)
    except FileNotFoundError:
        return None, ""
    except OSError as e:
        return None, f"cannot be opened ({os.strerror(e.errno or 0)}; a symlink?)"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None, f"is not private to uid {os.geteuid()} (owner {st.st_uid}, " \
                         f"mode {stat.S_IMODE(st.st_mode):o})"
        if st.st_nlink != 1:
            return None, f"has {st.st_nlink} links"
        if st.st_size > limit:
            return None, "is too large"
        return os.read(fd, limit + 1), ""
    except OSError as e:
        return None, f"cannot be read ({os.strerror(e.errno or 0)})"
    finally:
        os.close(fd)


# ---- the key ------------------------------------------------------------------------

def _starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def _exposure_lock(kdir: int) -> Iterator[int | None]:
    """The list of supervisors whose sandboxes could see this directory, locked.

    Discarding the key and making a new one both happen under this lock, so a
    key is never made while such a supervisor (and so its sandbox) lives."""
    try:
        fd = os.open(EXPOSED_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o600, dir_fd=kdir)
    except OSError:
        yield None
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            yield None
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _live_exposers(fd: int) -> list[str]:
    os.lseek(fd, 0, os.SEEK_SET)
    lines = os.read(fd, 1 << 16).decode(errors="replace").splitlines()
    live = []
    for line in lines:
        pid, _, start = line.partition(" ")
        if pid.isdigit() and _starttime(int(pid)) == start:
            live.append(line)
    return live


def discard_key(key_file: Where, reached_by: Iterable[str], writable: bool = False) -> None:
    """The sandbox about to start could see `key_file`: remove it, and note this
    supervisor so that no new key is made while it (and its sandbox) lives."""
    key_file = os.fspath(key_file)
    kdir = _open_private_dir(os.path.dirname(key_file), warn=False)
    if kdir is None:
        return
    try:
        with _exposure_lock(kdir) as lock:
            if lock is not None:
                live = _live_exposers(lock)
                me = f"{os.getpid()} {_starttime(os.getpid())}"
                os.ftruncate(lock, 0)
                os.lseek(lock, 0, os.SEEK_SET)
                os.write(lock, "".join(f"{x}\n" for x in {*live, me}).encode())
            try:
                os.unlink(os.path.basename(key_file), dir_fd=kdir)
            except FileNotFoundError:
                if not writable:
                    return
            except OSError:
                pass
            _warn(f"the sandbox can reach {', '.join(sorted(set(reached_by)))}, which holds "
                  f"the filter cache's key {key_file}: the cache is off for this run and the "
                  "key was discarded (bind narrower directories to keep the cache)"
                  + ("; it can also write there, so it could leave files that later runs "
                     "trust: do not hand a sandbox that directory writable" if writable else ""))
    finally:
        os.close(kdir)


def load_key(key_file: Where, *, create: bool = True,
             warn: bool = True) -> tuple[bytes | None, bool]:
    """(the cache key, whether it was just made); (None, False) when there is none to use.
    Without `create`, an absent key (or directory) stays absent; without `warn`, a key
    that cannot be used is not warned about (the caller that may create it warns)."""
    key_file = os.fspath(key_file)
    key_name = os.path.basename(key_file)
    kdir = _open_private_dir(os.path.dirname(key_file), create=create, warn=warn)
    if kdir is None:
        return None, False
    try:
        data, why = _read_private(kdir, key_name, KEY_BYTES)
        if data is not None and len(data) == KEY_BYTES:
            return data, False
        if data == b"":
            return None, False  # another run is writing it right now
        if data is not None or why:
            if warn:
                _warn(f"the filter cache's key {key_file} {why or 'has the wrong size'}; "
                      "the cache is not used until it is removed")
            return None, False
        if not create:
            return None, False
        with _exposure_lock(kdir) as lock:
            if lock is None or _live_exposers(lock):
                return None, False
            new = os.urandom(KEY_BYTES)
            try:
                fd = os.open(key_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=kdir)
            except OSError:
                return None, False
            try:
                written = os.write(fd, new)
            finally:
                os.close(fd)
            return (new, True) if written == KEY_BYTES else (None, False)
    finally:
        os.close(kdir)


# ---- entries ------------------------------------------------------------------------

def load(directory: Where, name: str, mac_key: bytes, kind: str = "filter") -> bytes | None:
    """The cached filter `name`, or None unless every check passes (a warning if it existed).
    kind "profile": a parsed-profile entry (its own magic and MAC person)."""
    magic, person = _KINDS[kind]
    dfd = _open_private_dir(directory)
    if dfd is None:
        return None
    try:
        data, why = _read_private(dfd, name, 1 << 20)
    finally:
        os.close(dfd)
    afresh = "compiling afresh" if kind == "filter" else "parsing afresh"
    if data is None:
        if why:
            _warn(f"{kind} cache entry {os.path.join(directory, name)} {why}; not used, "
                  f"{afresh}")
        return None
    head, sep, rest = data.partition(b"\n\n")
    lines = head.split(b"\n")
    if (sep and len(lines) == 3 and lines[0] + b"\n" == magic and lines[1] == name.encode()
            and rest and (kind != "filter" or not len(rest) % 8)
            and lines[2] == _mac(mac_key, name, rest, magic, person).encode()):
        return rest
    _warn(f"{kind} cache entry {os.path.join(directory, name)} failed authentication "
          "(changed by someone "
          f"without warden's key); not used, {afresh} and replacing it")
    return None


def store(directory: Where, name: str, code: bytes, mac_key: bytes, kind: str = "filter") -> None:
    """Write atomically (0600, in a 0700 directory of ours); give up silently on any problem."""
    magic, person = _KINDS[kind]
    dfd = _open_private_dir(directory, create=True)
    if dfd is None:
        return
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(magic + name.encode() + b"\n"
                        + _mac(mac_key, name, code, magic, person).encode() + b"\n\n" + code)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _clear_for_new_key(directory: Where) -> None:
    """_clear(directory), and the other kind's default directory when it is a default:
    both kinds share the key, and entries a new key cannot verify would warn."""
    _clear(directory)
    defaults = (_cache_dir(), _profiles_dir())
    if os.fspath(directory) in defaults:
        for other in defaults:
            if other is not None and other != os.fspath(directory):
                _clear(other)


def _clear(directory: Where) -> None:
    """Drop every entry: a new key cannot verify them, and they are not worth a warning."""
    dfd = _open_private_dir(directory, warn=False)
    if dfd is None:
        return
    try:
        for entry in os.listdir(dfd):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=dfd)
    finally:
        os.close(dfd)


# ---- what the sandbox can reach -------------------------------------------------------

def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _chain(path: str) -> set[tuple[int, int]]:
    """The identities of `path` and every directory above it (those that exist)."""
    out = set()
    p = os.path.abspath(path)
    while True:
        ident = _identity(p)
        if ident is not None:
            out.add(ident)
        if p == "/":
            return out
        p = os.path.dirname(p)


class _Target:
    """A directory the sandbox must not reach, resolved once for many comparisons."""

    def __init__(self, path: Where) -> None:
        self.real = os.path.realpath(path)
        self.ident = _identity(self.real)
        self.above = _chain(self.real)

    def shown_by(self, host_path: str) -> bool:
        """True if a bind of `host_path` shows any of the target: it is the target, a
        directory above it, or something inside it. Compared by device and inode as
        well as by name, so symlinks and bind-mount aliases do not hide it. A path that
        cannot be resolved (a sandbox renaming it under us: realpath's readlink then
        fails) counts as showing it: no cache is the safe answer."""
        try:
            src = os.path.realpath(host_path)
        except OSError:
            return True
        if src == self.real or self.real.startswith(src.rstrip("/") + "/") \
                or src.startswith(self.real + "/"):
            return True
        ident = _identity(src)
        if ident is not None and ident in self.above:
            return True  # at or above the target, under another name
        return self.ident is not None and self.ident in _chain(src)


def overlaps(host_path: str, target: Where) -> bool:
    return _Target(target).shown_by(host_path)


def _may_use(reach: list[Reach], where: Where, key_file: Where,
             discard: bool = False) -> bool:
    """Whether a run whose sandbox sees `reach` (Reach each) may use the cache: not if
    it can see the key or write the cache. With `discard`, a key the sandbox could
    read is discarded first (discard_key): any key it sees as an ordinary user (its
    uid is the key's owner's), and as root a key it sees with the owner's rights
    (through an owned bind or a --file grant; through a plain bind it is an outer uid
    of its own, which cannot open root's 0600 key)."""
    if not reach:
        return True
    key, cache = _Target(key_file), _Target(where)
    sees_key = [r for r in reach if key.shown_by(r[0])]
    readable = [r for r in sees_key if os.geteuid() != 0 or (len(r) > 2 and r[2])]
    if discard and readable:
        discard_key(key_file, [r[0] for r in readable], any(r[1] for r in readable))
    return not (sees_key or any(r[1] and cache.shown_by(r[0]) for r in reach))


def _compile(policy: SeccompPolicy, kill_as_notify: bool) -> bytes:
    from warden.profiles.compiler import compile_policy  # only on a miss: it loads the verifier

    return compile_policy(policy, kill_as_notify=kill_as_notify)


def cached_compile(policy: SeccompPolicy, *, kill_as_notify: bool = False,
                   directory: Where | None = None, key_file: Where | None = None,
                   reachable: Iterable[Reach] = ()) -> bytes:
    """Exactly `compile_policy(policy, kill_as_notify=...)`, from the cache when it can be.

    `reachable` lists the host paths the sandbox will see, each with whether
    it may write there and, optionally, whether it acts there with the owner's
    rights (Reach: its binds, owned binds and --file grants); `directory` and
    `key_file` override the locations (tests). Errors in the profile raise
    ProfileError as compile_policy does and are never cached.
    """
    where = directory if directory is not None else _cache_dir()
    key_file = key_file if key_file is not None else _key_path()
    if not enabled() or where is None or key_file is None:
        return _compile(policy, kill_as_notify)
    if not _may_use(list(reachable), where, key_file, discard=True):
        return _compile(policy, kill_as_notify)
    name = policy_key(policy, kill_as_notify)
    mac_key, fresh = load_key(key_file) if name is not None else (None, False)
    if name is None or mac_key is None:
        return _compile(policy, kill_as_notify)
    if fresh:
        _clear_for_new_key(where)
    code = None if fresh else load(where, name, mac_key)
    if code is None:
        code = _compile(policy, kill_as_notify)
        store(where, name, code, mac_key)
    return code


# ---- parsed profiles ------------------------------------------------------------------
#
# Parsing a profile (TOML, positions, hundreds of syscall names, the extends/include
# chain) and importing the parser cost `warden run` more than anything else of its
# own. A parsed profile is kept beside the filters ($XDG_CACHE_HOME/warden/profiles),
# under the same key and the same rules, with the
# loader's record of every file-system answer it rested on (warden.profiles.probe:
# each search-path candidate, present or not, and each file read, by real path and
# content digest). Before an entry is used its MAC is checked, then it is decoded by
# a decoder that builds only the model's own classes (never pickle), then every
# recorded question is asked again: one different answer and the profile is parsed
# afresh. The entry is written only after the sandbox's binds are known, and not
# when they could reach the key or write the cache (the filter cache's rule).

def profile_key(name_or_path: str) -> str | None:
    """The entry name for `name_or_path` as asked from here (the working directory and
    everything the search path is made of), or None when the code cannot be identified."""
    toolchain = _toolchain()
    if toolchain is None:
        return None
    try:
        h = blake2b(toolchain + PROFILE_MAGIC, digest_size=32)
        _hash_sources(h, _PROFILE_SOURCES)
        where = (name_or_path, os.getcwd(), os.environ.get("WARDEN_PROFILE_PATH"),
                 os.environ.get("XDG_CONFIG_HOME"), os.path.expanduser("~"))
    except OSError:
        return None
    h.update(repr(where).encode())
    return "p-" + h.hexdigest()


def _model_classes() -> dict[str, type]:
    """The classes a profile is made of: every dataclass and enum of the model."""
    import dataclasses
    import enum

    from warden.profiles import model, records

    # field_names first: is_dataclass() would have dataclass() process a lazy class.
    return {name: obj for name, obj in vars(model).items()
            if isinstance(obj, type) and obj.__module__ == model.__name__
            and (records.field_names(obj) is not None or dataclasses.is_dataclass(obj)
                 or issubclass(obj, enum.Enum))}


def encode_model(value: object) -> object:
    """A model object as JSON-able data, derived from its dataclass fields: a dataclass
    is {"$": class name, field: value...}, an enum {"$enum": class name, "value": v},
    a tuple a list. A field added to the model needs nothing here."""
    import dataclasses
    import enum

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {"$": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = encode_model(getattr(value, f.name))
        return out
    if isinstance(value, enum.Enum):
        return {"$enum": type(value).__name__, "value": value.value}
    if isinstance(value, tuple):
        return [encode_model(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"cannot keep a {type(value).__name__} in the profile cache")


class _Undecodable(ValueError):
    pass


class _Decoder:
    """Builds one model object from a dict whose values are already decoded: nothing but
    `classes`, each from exactly its declared fields (an unknown one is refused, a
    missing one takes its default); lists become tuples, as the frozen model holds them.
    Used as json's object_hook, so a profile is built as it is parsed."""

    def __init__(self, classes: dict[str, type] | None) -> None:
        import enum

        from warden.profiles import records

        self.known = _model_classes() if classes is None else classes
        self.types = set(self.known.values())
        # What a field may hold as it is: plain values and objects already built.
        self.plain = {str, int, float, bool, type(None), *self.types}
        self.enums = {n: c for n, c in self.known.items() if issubclass(c, enum.Enum)}
        self.members: dict[tuple[str, object], object] = {}
        self.fields_of: dict[str, tuple[type, tuple[str, ...], frozenset[str], bool]] = {}
        self.records = records

    def value(self, v: object) -> object:
        if isinstance(v, list):
            return tuple([self.value(x) for x in v])
        if v is None or isinstance(v, (str, int, float)) or type(v) in self.types:
            return v
        raise _Undecodable(f"unexpected {type(v).__name__}")

    def _enum(self, v: dict[str, object]) -> object:
        name, value = str(v["$enum"]), v.get("value")
        member = self.members.get((name, value))
        if member is None:
            cls = self.enums.get(name)
            if cls is None or len(v) != 2 or "value" not in v:
                raise _Undecodable(f"not an enum of the model: {v!r:.80}")
            member = self.members[name, value] = cls(value)
        return member

    def _class(self, name: str) -> tuple[type, tuple[str, ...], frozenset[str], bool]:
        import dataclasses

        cls = self.known.get(name)
        if cls is None or cls in self.enums.values():
            raise _Undecodable(f"not a class of the model: {name!r:.80}")
        lazy = self.records.field_names(cls)
        if lazy is None and not dataclasses.is_dataclass(cls):
            raise _Undecodable(f"not a class of the model: {cls.__name__}")
        names = lazy if lazy is not None else tuple(
            f.name for f in dataclasses.fields(cls) if f.init)
        found = self.fields_of[name] = (cls, names, frozenset(names), lazy is not None)
        return found

    def object(self, v: dict[str, object]) -> object:
        name = v.pop("$", None)
        if name is None:
            if "$enum" in v:
                return self._enum(v)
            return v  # the entry's own frame ({"checks": ..., "profile": ...})
        found = self.fields_of.get(name)  # type: ignore[call-overload]
        if found is None:
            found = self._class(str(name))
        cls, names, allowed, lazy_class = found
        plain = self.plain
        for k, x in v.items():
            if type(x) not in plain:
                v[k] = self.value(x)  # a list (a tuple field), or refused
        if not allowed.issuperset(v):
            raise _Undecodable(f"{cls.__name__}: unknown fields {sorted(set(v) - allowed)}")
        if lazy_class and len(v) == len(names):
            # Every field given: made as __init__ makes it (its object.__setattr__ calls,
            # in field order), without having dataclass() process the class: most are
            # never used by `warden run`.
            obj = object.__new__(cls)
            obj.__dict__.update([(n, v[n]) for n in names])
            return obj
        return cls(**v)


def loads_model(raw: bytes, classes: dict[str, type] | None = None) -> object:
    """json.loads(raw) with every model object built as it is parsed (_Decoder)."""
    import json

    return json.loads(raw, object_hook=_Decoder(classes).object)


class ProfileLookup:
    """A profile for `warden run`, from the cache when it can be; `keep()` stores it
    once the sandbox's reach is known."""

    def __init__(self, name_or_path: str, directory: Where | None = None,
                 key_file: Where | None = None) -> None:
        self.where = os.fspath(directory) if directory is not None else _profiles_dir()
        self.key_file = os.fspath(key_file) if key_file is not None else _key_path()
        self.hit = False
        self._pending: bytes | None = None
        self.profile: Profile
        self.name = None if (not enabled() or self.where is None or self.key_file is None) \
            else profile_key(name_or_path)
        if self.name is not None:
            assert self.key_file is not None and self.where is not None
            # Only a key that exists: one is made (and old entries dropped) by keep()
            # or by the filter cache, once the sandbox's reach is known.
            mac_key, _ = load_key(self.key_file, create=False, warn=False)
            if mac_key is not None:
                found = self._lookup(self.where, self.name, mac_key)
                if found is not None:
                    self.profile, self.hit = found, True
                    return
        from warden.profiles.loader import load_profile_traced

        profile, checks = load_profile_traced(name_or_path)
        self.profile = profile
        if self.name is not None:
            import json

            # Nothing but the model's own values: encode_model raises on anything else.
            body = {"checks": checks, "profile": encode_model(profile)}
            self._pending = json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def _lookup(where: str, name: str, mac_key: bytes) -> Profile | None:
        from warden.profiles import probe
        from warden.profiles.model import Profile

        raw = load(where, name, mac_key, kind="profile")
        if raw is None:
            return None
        try:
            # Authenticated above; decoded into plain data and the model's classes only.
            body = loads_model(raw)
            if not isinstance(body, dict) or set(body) != {"checks", "profile"}:
                raise _Undecodable("not a profile entry")
            profile = body["profile"]
            if not isinstance(profile, Profile):
                raise _Undecodable("not a profile")
        except (ValueError, TypeError, RecursionError) as e:
            _warn(f"profile cache entry {os.path.join(where, name)} cannot be read ({e}); "
                  "not used, parsing afresh")
            return None
        return profile if probe.still_true(body["checks"]) else None

    def keep(self, reachable: Iterable[Reach]) -> None:
        """Store a freshly parsed profile, unless the sandbox that is about to start
        could reach the key or write the cache."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        assert self.where is not None and self.key_file is not None and self.name is not None
        if not _may_use(list(reachable), self.where, self.key_file):
            return
        mac_key, fresh = load_key(self.key_file)
        if mac_key is None:
            return
        if fresh:
            _clear_for_new_key(self.where)
        store(self.where, self.name, pending, mac_key, kind="profile")
