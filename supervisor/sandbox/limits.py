"""Resource limits: cgroup v2, else cgroup v1 (as root), else rlimits; the status says which.

Memory and process counts are best held by a cgroup: it covers the whole
sandbox (every process in it), counts real memory, and reports the peak and
whether the OOM killer struck. The parent creates the cgroup, writes the
limits and moves the child's init into it before the child goes on, so
nothing in the sandbox ever runs outside it.

`WARDEN_CGROUP=none` chooses rlimits deliberately (the status says so).

- cgroup v2: in `$WARDEN_CGROUP` if set, else in the supervisor's own
  cgroup, which must be writable with memory and pids enabled for its
  children (a delegated subtree; see docs/sandbox.md).
- cgroup v1: the memory and pids hierarchies, when writable (root), and the
  cpu hierarchy when it is writable too.

A sandbox in a cgroup is also one entity to the CPU scheduler, weighing what one
ordinary process does (cgroup v2's cpu.weight 100 when the controller is
enabled; v1's cpu.shares 1024): however many processes it runs, and however
many sandboxes a supervisor starts, none takes more than one process's share
from the supervisor or a sibling. Without it each sandbox's own session is an
autogroup of its own (kernel.sched_autogroup_enabled), as heavy as the host's
whole session: 200 busy workers left the supervisor 1/201 of the CPU, and a
bad frame waited ~250 ms to be read.
- rlimits: RLIMIT_NPROC for processes, counted per user namespace by the
  kernel (5.14+), so per sandbox. Memory is then NOT held as one limit: the
  sandbox's processes together, memfds, pipes and socket buffers can exceed
  it. What can be capped is: RLIMIT_AS per process, RLIMIT_FSIZE per file
  (memfds and tmpfs files included), RLIMIT_MSGQUEUE, every tmpfs (/tmp
  included) at the limit, and, as root, SysV shared memory and message
  queues in the sandbox's own IPC namespace (kernel.shmall/shmmax/shmmni,
  kernel.msgmni/msgmnb). The status lists the limit in `weakened`, peak
  memory is unknown (None), and a memory limit the caller asked for is
  refused up front unless they accept this (`--memory-rlimit-only`).

RLIMIT_NOFILE, RLIMIT_CPU and RLIMIT_CORE (0) are always set in the child.
Rlimits only ever go down: the parent clamps each to its own hard limit.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import resource
import time
from typing import TYPE_CHECKING, NamedTuple

from warden.errors import Unavailable
from warden.supervisor.sandbox import _sys
from warden.supervisor.sandbox.errors import SandboxError

if TYPE_CHECKING:  # (spec checks limits through this module: no import back)
    from warden.supervisor.sandbox.spec import SandboxSpec

_counter = itertools.count()
_swept: set[str] = set()


def _name() -> str:
    # The pid says whose it was (for sweeping), the random part keeps a reused
    # pid from colliding with a cgroup its earlier owner could not remove.
    return f"warden-{os.getpid()}-{next(_counter)}-{os.urandom(4).hex()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(parent: str) -> None:
    """Remove empty cgroups left by supervisors that died without cleaning up
    (a SIGKILLed supervisor cannot); once per parent directory and process."""
    if parent in _swept:
        return
    _swept.add(parent)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if parts[0] != "warden" or len(parts) < 3 or not parts[1].isdigit():
            continue
        if int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(parent, name))  # refused while not empty


class LimitsError(SandboxError, Unavailable, OSError):
    """A cgroup could not be created, limited or joined."""


class Usage(NamedTuple):
    peak_memory_bytes: int | None
    oom_killed: bool


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _own_cgroups() -> dict[str, str]:
    """{controller or '' for v2: path} from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _hid, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


def _mounts() -> dict[str, dict[str, str]]:
    """{fstype: {mount point: super options}} for the cgroup filesystems (one read)."""
    out: dict[str, dict[str, str]] = {"cgroup": {}, "cgroup2": {}}
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if fields and fields[0] in out:
            out[fields[0]][left.split()[4]] = fields[2] if len(fields) > 2 else ""
    return out


class Limiter:
    """Rlimits only (the fallback); the cgroup limiters extend it."""

    mechanism = "rlimit"

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec

    def rlimits(self) -> tuple[tuple[int, int, int], ...]:
        """(resource, soft, hard) for the child, clamped to what this process may set."""
        s = self.spec
        wanted: list[tuple[int, int, int]] = [
            (resource.RLIMIT_NOFILE, s.open_files, s.open_files),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        if s.cpu_time_seconds is not None:
            secs = max(1, int(s.cpu_time_seconds + 0.999))
            wanted.append((resource.RLIMIT_CPU, secs, secs + 1))
        if self.mechanism == "rlimit":
            wanted.append((resource.RLIMIT_AS, s.memory_bytes, s.memory_bytes))
            wanted.append((resource.RLIMIT_NPROC, s.processes, s.processes))
            # No cgroup counts file pages: cap each file (a memfd, a tmpfs file,
            # a file in a writable bind) and the POSIX message queues instead.
            wanted.append((resource.RLIMIT_FSIZE, s.memory_bytes, s.memory_bytes))
            wanted.append((resource.RLIMIT_MSGQUEUE, s.memory_bytes, s.memory_bytes))
        out = []
        for res, soft, hard in wanted:
            _cur_soft, cur_hard = resource.getrlimit(res)
            if cur_hard != resource.RLIM_INFINITY:
                hard = min(hard, cur_hard)
                soft = min(soft, hard)
            out.append((res, soft, hard))
        return tuple(out)

    def tmpfs_size(self, size: int) -> int:
        """A tmpfs of the sandbox, capped at the memory limit when no cgroup counts its pages."""
        return min(size, self.spec.memory_bytes) if self.mechanism == "rlimit" else size

    def ipc_limits(self) -> tuple[tuple[str, str], ...]:
        """Root without a cgroup: (sysctl path, value) for the sandbox's own IPC namespace,
        so SysV shared memory and message queues together stay within the memory limit."""
        if self.mechanism != "rlimit" or os.geteuid() != 0:
            return ()
        mem = self.spec.memory_bytes
        page = os.sysconf("SC_PAGE_SIZE")
        return (("/proc/sys/kernel/shmmax", str(mem)),
                ("/proc/sys/kernel/shmall", str(max(1, mem // page))),
                ("/proc/sys/kernel/shmmni", "64"),
                ("/proc/sys/kernel/msgmni", "16"),
                ("/proc/sys/kernel/msgmnb", str(max(1, min(16384, mem // 16)))))

    def create(self) -> None:
        """Prepare before fork (cgroups: mkdir and write the limits)."""

    def clone_into_fd(self) -> int:
        """cgroup v2: an O_PATH descriptor of the new cgroup, for clone3(CLONE_INTO_CGROUP),
        so the init is born in it and attach() has nothing to move; -1 otherwise
        (cgroup v1 has no such clone: the init is moved there after the clone)."""
        return -1

    def attach(self, pid: int, born_in: bool = False) -> None:
        """Move `pid` (the child's init) in, before it runs anything of the workload.
        `born_in`: clone3 put it there already (clone_into_fd())."""

    def usage(self) -> Usage:
        return Usage(None, False)

    def destroy(self) -> None:
        """Remove what create() made; the sandbox is gone by then."""


class CgroupV2(Limiter):
    mechanism = "cgroup-v2"

    def __init__(self, spec: SandboxSpec, parent: str) -> None:
        super().__init__(spec)
        sweep(parent)
        self.dir = os.path.join(parent, _name())
        self._dir_fd = -1

    def create(self) -> None:
        try:
            os.mkdir(self.dir, 0o755)
            self._limit()
            self._dir_fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            self.destroy()
            raise LimitsError(e.errno or errno.EIO, f"cgroup v2 {self.dir}: {e.strerror}") \
                from None

    def _limit(self) -> None:
        _write(f"{self.dir}/memory.max", str(self.spec.memory_bytes))
        if os.path.exists(f"{self.dir}/memory.swap.max"):
            _write(f"{self.dir}/memory.swap.max", "0")
        _write(f"{self.dir}/pids.max", str(self.spec.processes))
        if os.path.exists(f"{self.dir}/cpu.weight"):  # one process's weight (the default)
            _write(f"{self.dir}/cpu.weight", "100")

    def clone_into_fd(self) -> int:
        return self._dir_fd

    def attach(self, pid: int, born_in: bool = False) -> None:
        if self._dir_fd >= 0:  # the clone is over: the descriptor has done its part
            os.close(self._dir_fd)
            self._dir_fd = -1
        if not born_in:
            _write(f"{self.dir}/cgroup.procs", str(pid))

    def usage(self) -> Usage:
        peak = _read(f"{self.dir}/memory.peak").strip()
        oom = False
        for line in _read(f"{self.dir}/memory.events").splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill" and int(v) > 0:
                oom = True
        return Usage(int(peak) if peak.isdigit() else None, oom)

    def destroy(self) -> None:
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        _rmdir(self.dir)


class CgroupV1(Limiter):
    mechanism = "cgroup-v1"

    def __init__(self, spec: SandboxSpec, mem_dir: str, pids_dir: str,
                 cpu_dir: str | None = None) -> None:
        super().__init__(spec)
        sweep(mem_dir)
        sweep(pids_dir)
        name = _name()
        self.mem = os.path.join(mem_dir, name)
        self.pids = os.path.join(pids_dir, name)
        self.cpu: str | None = None
        if cpu_dir is not None:
            sweep(cpu_dir)
            self.cpu = os.path.join(cpu_dir, name)

    def create(self) -> None:
        try:
            os.mkdir(self.mem, 0o755)
            os.mkdir(self.pids, 0o755)
            if self.cpu is not None:  # cpu.shares starts at 1024: one process's weight
                os.mkdir(self.cpu, 0o755)
            _write(f"{self.mem}/memory.limit_in_bytes", str(self.spec.memory_bytes))
            if os.path.exists(f"{self.mem}/memory.memsw.limit_in_bytes"):
                _write(f"{self.mem}/memory.memsw.limit_in_bytes", str(self.spec.memory_bytes))
            _write(f"{self.pids}/pids.max", str(self.spec.processes))
        except OSError as e:
            self.destroy()
            raise LimitsError(e.errno or errno.EIO, f"cgroup v1: {e.strerror}") from None

    def attach(self, pid: int, born_in: bool = False) -> None:
        # Each move waits for an RCU grace period (cgroup_threadgroup_rwsem's writer
        # side), 1-10 ms on a loaded machine; the second follows within the first's
        # and does not wait again. The init builds its root meanwhile.
        _write(f"{self.mem}/cgroup.procs", str(pid))
        _write(f"{self.pids}/cgroup.procs", str(pid))
        if self.cpu is not None:
            _write(f"{self.cpu}/cgroup.procs", str(pid))

    def usage(self) -> Usage:
        peak = _read(f"{self.mem}/memory.max_usage_in_bytes").strip()
        oom = False
        for line in _read(f"{self.mem}/memory.oom_control").splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill" and int(v) > 0:
                oom = True
        return Usage(int(peak) if peak.isdigit() else None, oom)

    def destroy(self) -> None:
        _rmdir(self.mem)
        _rmdir(self.pids)
        if self.cpu is not None:
            _rmdir(self.cpu)


def _rmdir(path: str) -> None:
    # The sandbox's processes are reaped by now, but the kernel may take a
    # moment to let go of the cgroup.
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                return
            time.sleep(0.002)


def _v2_parent(mounts: dict[str, str], own_all: dict[str, str]) -> str | None:
    own = own_all.get("")
    if own is None:
        return None
    for mnt in mounts:
        d = os.path.normpath(mnt + own)
        ctl = _read(f"{d}/cgroup.subtree_control").split()
        if "memory" in ctl and "pids" in ctl and os.access(d, os.W_OK):
            return d
    return None


def _v1_dirs(mounts: dict[str, str], own: dict[str, str]
             ) -> tuple[str, str, str | None] | None:
    """The memory and pids hierarchies' directories (both needed), and the cpu one's
    when it is writable too (else None: the sandbox is then no CPU group of its own)."""
    found: dict[str, str] = {}
    for mnt, opts in mounts.items():
        for ctrl in ("memory", "pids", "cpu"):
            if ctrl in opts.split(","):
                d = os.path.normpath(mnt + own.get(ctrl, "/"))
                if os.access(d, os.W_OK) and os.path.exists(f"{d}/cgroup.procs"):
                    found[ctrl] = d
    if "memory" in found and "pids" in found:
        return found["memory"], found["pids"], found.get("cpu")
    return None


def available_mechanism() -> str:
    """"cgroup-v2", "cgroup-v1" or "rlimit": what choose() would use here, now."""
    explicit = os.environ.get("WARDEN_CGROUP")
    if explicit == "none":
        return "rlimit"
    if explicit:
        return "cgroup-v2" if os.access(explicit, os.W_OK) else "rlimit"
    mounts, own = _mounts(), _own_cgroups()
    if _v2_parent(mounts["cgroup2"], own) is not None:
        return "cgroup-v2"
    return "cgroup-v1" if _v1_dirs(mounts["cgroup"], own) is not None else "rlimit"


def parent_ipc_limits(pid: int, values: tuple[tuple[str, str], ...]) -> None:
    """Parent side, as root: write the IPC-namespace sysctls of the sandbox whose init is `pid`.

    /proc/sys/kernel/shm* and msg* show the writer's own IPC namespace, and only
    that namespace's root may write them; the sandbox maps no root, so the
    kernel takes the host's root as it. This thread therefore enters the
    sandbox's IPC namespace for the writes (setns applies to the calling
    thread only) and comes straight back."""
    if not values:
        return
    own = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        theirs = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _sys.setns(theirs, _sys.CLONE_NEWIPC)
            try:
                for path, value in values:
                    _write(path, value)
            finally:
                _sys.setns(own, _sys.CLONE_NEWIPC)
        finally:
            os.close(theirs)
    finally:
        os.close(own)


def choose(spec: SandboxSpec) -> Limiter:
    """The strongest mechanism this process can use (WARDEN_CGROUP=none: rlimits only)."""
    explicit = os.environ.get("WARDEN_CGROUP")
    if explicit == "none":
        return Limiter(spec)
    if explicit:
        with contextlib.suppress(OSError):
            return CgroupV2(spec, explicit)
    mounts, own = _mounts(), _own_cgroups()  # each read once
    v2 = None if explicit else _v2_parent(mounts["cgroup2"], own)
    if v2 is not None:
        with contextlib.suppress(OSError):
            return CgroupV2(spec, v2)
    v1 = _v1_dirs(mounts["cgroup"], own)
    if v1 is not None:
        return CgroupV1(spec, *v1)
    return Limiter(spec)


def child_rlimits(limits: tuple[tuple[int, int, int], ...]) -> None:
    """Child side."""
    for res, soft, hard in limits:
        resource.setrlimit(res, (soft, hard))


def child_cgroup_namespace() -> None:
    """In the init, once the parent has moved it into its cgroup: a cgroup namespace
    rooted there, so the sandbox sees its own cgroup as / and no path of the host's."""
    _sys.unshare(_sys.CLONE_NEWCGROUP)
