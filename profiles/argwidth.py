"""How many bits of each x86_64 system call argument the kernel reads.

seccomp hands the filter all 64 bits of each argument register, but the
kernel's own entry code reads many arguments as 32-bit (or 16-bit) values:
every `SYSCALL_DEFINEn` stub casts each register to the prototype's C type
(include/linux/syscalls.h, `__SC_CAST`), so `ioctl(fd, TIOCSTI | 1 << 32, p)`
reaches the driver as TIOCSTI. A rule `ioctl errno EPERM if arg1 == TIOCSTI`
never matches that call, and the call goes through. Such a test has to look
only at the bits the kernel reads: `arg1 & 0xffffffff == TIOCSTI`.

PROTOTYPES lists, for every call on x86_64 that takes arguments, the C type
of each one, copied from the kernel's prototypes (include/linux/syscalls.h and,
for x86-only calls, arch/x86). A few calls take an `unsigned long` and narrow
it themselves; NARROWED names those. A call missing from the table is treated
as reading all 64 bits of every argument, which is what seccomp compares.
"""

from __future__ import annotations

import functools
import itertools

from warden.profiles.model import ArgCondition, ArgOp

_U64 = (1 << 64) - 1

# C type -> bits the kernel keeps after the cast. "ptr" is any pointer.
TYPE_BITS: dict[str, int] = {
    "umode_t": 16,
    **{t: 32 for t in ("int", "unsigned int", "unsigned", "u32", "__u32", "__s32", "uint32_t",
                       "uid_t", "gid_t", "pid_t", "key_t", "mqd_t", "timer_t", "clockid_t",
                       "qid_t", "rwf_t", "key_serial_t", "enum")},
    **{t: 64 for t in ("long", "unsigned long", "size_t", "loff_t", "off_t", "u64",
                       "aio_context_t", "ptr")},
}

# Arguments declared unsigned long (or long) that the kernel itself cuts to 32 bits.
NARROWED: dict[tuple[str, int], str] = {
    ("clone", 0): "kernel/fork.c keeps lower_32_bits(clone_flags)",
    ("mmap", 4): "ksys_mmap_pgoff() passes it to fget(), which takes an unsigned int",
    ("ptrace", 1): "find_get_task_by_vpid() takes a pid_t",
    **{(name, 0): "fdget() takes an unsigned int"
       for name in ("readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2")},
}


PROTOTYPES: dict[str, str] = {
    line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
    for line in """
    accept: int, ptr, ptr
    accept4: int, ptr, ptr, int
    access: ptr, int
    acct: ptr
    add_key: ptr, ptr, ptr, size_t, key_serial_t
    adjtimex: ptr
    alarm: unsigned int
    arch_prctl: int, unsigned long
    bind: int, ptr, int
    bpf: int, ptr, unsigned int
    brk: unsigned long
    cachestat: unsigned int, ptr, ptr, unsigned int
    capget: ptr, ptr
    capset: ptr, ptr
    chdir: ptr
    chmod: ptr, umode_t
    chown: ptr, uid_t, gid_t
    chroot: ptr
    clock_adjtime: clockid_t, ptr
    clock_getres: clockid_t, ptr
    clock_gettime: clockid_t, ptr
    clock_nanosleep: clockid_t, int, ptr, ptr
    clock_settime: clockid_t, ptr
    clone: unsigned long, unsigned long, ptr, ptr, unsigned long
    clone3: ptr, size_t
    close: unsigned int
    close_range: unsigned int, unsigned int, unsigned int
    connect: int, ptr, int
    copy_file_range: int, ptr, int, ptr, size_t, unsigned int
    creat: ptr, umode_t
    delete_module: ptr, unsigned int
    dup: unsigned int
    dup2: unsigned int, unsigned int
    dup3: unsigned int, unsigned int, int
    epoll_create: int
    epoll_create1: int
    epoll_ctl: int, int, int, ptr
    epoll_pwait: int, ptr, int, int, ptr, size_t
    epoll_pwait2: int, ptr, int, ptr, ptr, size_t
    epoll_wait: int, ptr, int, int
    eventfd: unsigned int
    eventfd2: unsigned int, int
    execve: ptr, ptr, ptr
    execveat: int, ptr, ptr, ptr, int
    exit: int
    exit_group: int
    faccessat: int, ptr, int
    faccessat2: int, ptr, int, int
    fadvise64: int, loff_t, size_t, int
    fallocate: int, int, loff_t, loff_t
    fanotify_init: unsigned int, unsigned int
    fanotify_mark: int, unsigned int, u64, int, ptr
    fchdir: unsigned int
    fchmod: unsigned int, umode_t
    fchmodat: int, ptr, umode_t
    fchmodat2: int, ptr, umode_t, unsigned int
    fchown: unsigned int, uid_t, gid_t
    fchownat: int, ptr, uid_t, gid_t, int
    fcntl: unsigned int, unsigned int, unsigned long
    fdatasync: unsigned int
    fgetxattr: int, ptr, ptr, size_t
    finit_module: int, ptr, int
    flistxattr: int, ptr, size_t
    flock: unsigned int, unsigned int
    fremovexattr: int, ptr
    fsconfig: int, unsigned int, ptr, ptr, int
    fsetxattr: int, ptr, ptr, size_t, int
    fsmount: int, unsigned int, unsigned int
    fsopen: ptr, unsigned int
    fspick: int, ptr, unsigned int
    fstat: unsigned int, ptr
    fstatfs: unsigned int, ptr
    fsync: unsigned int
    ftruncate: unsigned int, unsigned long
    futex: ptr, int, u32, ptr, ptr, u32
    futex_requeue: ptr, unsigned int, int, int
    futex_wait: ptr, unsigned long, unsigned long, unsigned int, ptr, clockid_t
    futex_waitv: ptr, unsigned int, unsigned int, ptr, clockid_t
    futex_wake: ptr, unsigned long, int, unsigned int
    futimesat: int, ptr, ptr
    get_mempolicy: ptr, ptr, unsigned long, unsigned long, unsigned long
    get_robust_list: int, ptr, ptr
    get_thread_area: ptr
    getcpu: ptr, ptr, ptr
    getcwd: ptr, unsigned long
    getdents: unsigned int, ptr, unsigned int
    getdents64: unsigned int, ptr, unsigned int
    getgroups: int, ptr
    getitimer: int, ptr
    getpeername: int, ptr, ptr
    getpgid: pid_t
    getpriority: int, int
    getrandom: ptr, size_t, unsigned int
    getresgid: ptr, ptr, ptr
    getresuid: ptr, ptr, ptr
    getrlimit: unsigned int, ptr
    getrusage: int, ptr
    getsid: pid_t
    getsockname: int, ptr, ptr
    getsockopt: int, int, int, ptr, ptr
    gettimeofday: ptr, ptr
    getxattr: ptr, ptr, ptr, size_t
    init_module: ptr, unsigned long, ptr
    inotify_add_watch: int, ptr, u32
    inotify_init1: int
    inotify_rm_watch: int, __s32
    io_cancel: aio_context_t, ptr, ptr
    io_destroy: aio_context_t
    io_getevents: aio_context_t, long, long, ptr, ptr
    io_pgetevents: aio_context_t, long, long, ptr, ptr, ptr
    io_setup: unsigned, ptr
    io_submit: aio_context_t, long, ptr
    io_uring_enter: unsigned int, u32, u32, u32, ptr, size_t
    io_uring_register: unsigned int, unsigned int, ptr, unsigned int
    io_uring_setup: u32, ptr
    ioctl: unsigned int, unsigned int, unsigned long
    ioperm: unsigned long, unsigned long, int
    iopl: unsigned int
    ioprio_get: int, int
    ioprio_set: int, int, int
    kcmp: pid_t, pid_t, int, unsigned long, unsigned long
    kexec_file_load: int, int, unsigned long, ptr, unsigned long
    kexec_load: unsigned long, unsigned long, ptr, unsigned long
    keyctl: int, unsigned long, unsigned long, unsigned long, unsigned long
    kill: pid_t, int
    landlock_add_rule: int, enum, ptr, __u32
    landlock_create_ruleset: ptr, size_t, __u32
    landlock_restrict_self: int, __u32
    lchown: ptr, uid_t, gid_t
    lgetxattr: ptr, ptr, ptr, size_t
    link: ptr, ptr
    linkat: int, ptr, int, ptr, int
    listen: int, int
    listxattr: ptr, ptr, size_t
    llistxattr: ptr, ptr, size_t
    lremovexattr: ptr, ptr
    lseek: unsigned int, off_t, unsigned int
    lsetxattr: ptr, ptr, ptr, size_t, int
    lstat: ptr, ptr
    madvise: unsigned long, size_t, int
    map_shadow_stack: unsigned long, unsigned long, unsigned int
    mbind: unsigned long, unsigned long, unsigned long, ptr, unsigned long, unsigned
    membarrier: int, unsigned int, int
    memfd_create: ptr, unsigned int
    memfd_secret: unsigned int
    migrate_pages: pid_t, unsigned long, ptr, ptr
    mincore: unsigned long, size_t, ptr
    mkdir: ptr, umode_t
    mkdirat: int, ptr, umode_t
    mknod: ptr, umode_t, unsigned
    mknodat: int, ptr, umode_t, unsigned
    mlock: unsigned long, size_t
    mlock2: unsigned long, size_t, int
    mlockall: int
    mmap: unsigned long, unsigned long, unsigned long, unsigned long, unsigned long, unsigned long
    modify_ldt: int, ptr, unsigned long
    mount: ptr, ptr, ptr, unsigned long, ptr
    mount_setattr: int, ptr, unsigned int, ptr, size_t
    move_mount: int, ptr, int, ptr, unsigned int
    move_pages: pid_t, unsigned long, ptr, ptr, ptr, int
    mprotect: unsigned long, size_t, unsigned long
    mq_getsetattr: mqd_t, ptr, ptr
    mq_notify: mqd_t, ptr
    mq_open: ptr, int, umode_t, ptr
    mq_timedreceive: mqd_t, ptr, size_t, ptr, ptr
    mq_timedsend: mqd_t, ptr, size_t, unsigned int, ptr
    mq_unlink: ptr
    mremap: unsigned long, unsigned long, unsigned long, unsigned long, unsigned long
    msgctl: int, int, ptr
    msgget: key_t, int
    msgrcv: int, ptr, size_t, long, int
    msgsnd: int, ptr, size_t, int
    msync: unsigned long, size_t, int
    munlock: unsigned long, size_t
    munmap: unsigned long, size_t
    name_to_handle_at: int, ptr, ptr, ptr, int
    nanosleep: ptr, ptr
    newfstatat: int, ptr, ptr, int
    open: ptr, int, umode_t
    open_by_handle_at: int, ptr, int
    open_tree: int, ptr, unsigned
    openat: int, ptr, int, umode_t
    openat2: int, ptr, ptr, size_t
    perf_event_open: ptr, pid_t, int, int, unsigned long
    personality: unsigned int
    pidfd_getfd: int, int, unsigned int
    pidfd_open: pid_t, unsigned int
    pidfd_send_signal: int, int, ptr, unsigned int
    pipe: ptr
    pipe2: ptr, int
    pivot_root: ptr, ptr
    pkey_alloc: unsigned long, unsigned long
    pkey_free: int
    pkey_mprotect: unsigned long, size_t, unsigned long, int
    poll: ptr, unsigned int, int
    ppoll: ptr, unsigned int, ptr, ptr, size_t
    prctl: int, unsigned long, unsigned long, unsigned long, unsigned long
    pread64: unsigned int, ptr, size_t, loff_t
    preadv: unsigned long, ptr, unsigned long, unsigned long, unsigned long
    preadv2: unsigned long, ptr, unsigned long, unsigned long, unsigned long, rwf_t
    prlimit64: pid_t, unsigned int, ptr, ptr
    process_madvise: int, ptr, size_t, int, unsigned int
    process_mrelease: int, unsigned int
    process_vm_readv: pid_t, ptr, unsigned long, ptr, unsigned long, unsigned long
    process_vm_writev: pid_t, ptr, unsigned long, ptr, unsigned long, unsigned long
    pselect6: int, ptr, ptr, ptr, ptr, ptr
    ptrace: long, long, unsigned long, unsigned long
    pwrite64: unsigned int, ptr, size_t, loff_t
    pwritev: unsigned long, ptr, unsigned long, unsigned long, unsigned long
    pwritev2: unsigned long, ptr, unsigned long, unsigned long, unsigned long, rwf_t
    quotactl: unsigned int, ptr, qid_t, ptr
    quotactl_fd: unsigned int, unsigned int, qid_t, ptr
    read: unsigned int, ptr, size_t
    readahead: int, loff_t, size_t
    readlink: ptr, ptr, int
    readlinkat: int, ptr, ptr, int
    readv: unsigned long, ptr, unsigned long
    reboot: int, int, unsigned int, ptr
    recvfrom: int, ptr, size_t, unsigned, ptr, ptr
    recvmmsg: int, ptr, unsigned int, unsigned, ptr
    recvmsg: int, ptr, unsigned
    remap_file_pages: unsigned long, unsigned long, unsigned long, unsigned long, unsigned long
    removexattr: ptr, ptr
    rename: ptr, ptr
    renameat: int, ptr, int, ptr
    renameat2: int, ptr, int, ptr, unsigned int
    request_key: ptr, ptr, ptr, key_serial_t
    rmdir: ptr
    rseq: ptr, uint32_t, int, uint32_t
    rt_sigaction: int, ptr, ptr, size_t
    rt_sigpending: ptr, size_t
    rt_sigprocmask: int, ptr, ptr, size_t
    rt_sigqueueinfo: pid_t, int, ptr
    rt_sigsuspend: ptr, size_t
    rt_sigtimedwait: ptr, ptr, ptr, size_t
    rt_tgsigqueueinfo: pid_t, pid_t, int, ptr
    sched_get_priority_max: int
    sched_get_priority_min: int
    sched_getaffinity: pid_t, unsigned int, ptr
    sched_getattr: pid_t, ptr, unsigned int, unsigned int
    sched_getparam: pid_t, ptr
    sched_getscheduler: pid_t
    sched_rr_get_interval: pid_t, ptr
    sched_setaffinity: pid_t, unsigned int, ptr
    sched_setattr: pid_t, ptr, unsigned int
    sched_setparam: pid_t, ptr
    sched_setscheduler: pid_t, int, ptr
    seccomp: unsigned int, unsigned int, ptr
    select: int, ptr, ptr, ptr, ptr
    semctl: int, int, int, unsigned long
    semget: key_t, int, int
    semop: int, ptr, unsigned
    semtimedop: int, ptr, unsigned, ptr
    sendfile: int, int, ptr, size_t
    sendmmsg: int, ptr, unsigned int, unsigned
    sendmsg: int, ptr, unsigned
    sendto: int, ptr, size_t, unsigned, ptr, int
    set_mempolicy: int, ptr, unsigned long
    set_mempolicy_home_node: unsigned long, unsigned long, unsigned long, unsigned long
    set_robust_list: ptr, size_t
    set_thread_area: ptr
    set_tid_address: ptr
    setdomainname: ptr, int
    setfsgid: gid_t
    setfsuid: uid_t
    setgid: gid_t
    setgroups: int, ptr
    sethostname: ptr, int
    setitimer: int, ptr, ptr
    setns: int, int
    setpgid: pid_t, pid_t
    setpriority: int, int, int
    setregid: gid_t, gid_t
    setresgid: gid_t, gid_t, gid_t
    setresuid: uid_t, uid_t, uid_t
    setreuid: uid_t, uid_t
    setrlimit: unsigned int, ptr
    setsockopt: int, int, int, ptr, int
    settimeofday: ptr, ptr
    setuid: uid_t
    setxattr: ptr, ptr, ptr, size_t, int
    shmat: int, ptr, int
    shmctl: int, int, ptr
    shmdt: ptr
    shmget: key_t, size_t, int
    shutdown: int, int
    sigaltstack: ptr, ptr
    signalfd: int, ptr, size_t
    signalfd4: int, ptr, size_t, int
    socket: int, int, int
    socketpair: int, int, int, ptr
    splice: int, ptr, int, ptr, size_t, unsigned int
    stat: ptr, ptr
    statfs: ptr, ptr
    statx: int, ptr, unsigned, unsigned, ptr
    swapoff: ptr
    swapon: ptr, int
    symlink: ptr, ptr
    symlinkat: ptr, int, ptr
    sync_file_range: int, loff_t, loff_t, unsigned int
    syncfs: int
    sysfs: int, unsigned long, unsigned long
    sysinfo: ptr
    syslog: int, ptr, int
    tee: int, int, size_t, unsigned int
    tgkill: pid_t, pid_t, int
    time: ptr
    timer_create: clockid_t, ptr, ptr
    timer_delete: timer_t
    timer_getoverrun: timer_t
    timer_gettime: timer_t, ptr
    timer_settime: timer_t, int, ptr, ptr
    timerfd_create: int, int
    timerfd_gettime: int, ptr
    timerfd_settime: int, int, ptr, ptr
    times: ptr
    tkill: pid_t, int
    truncate: ptr, long
    umask: int
    umount2: ptr, int
    uname: ptr
    unlink: ptr
    unlinkat: int, ptr, int
    unshare: unsigned long
    userfaultfd: int
    ustat: unsigned, ptr
    utime: ptr, ptr
    utimensat: int, ptr, ptr, int
    utimes: ptr, ptr
    vmsplice: int, ptr, unsigned long, unsigned int
    wait4: pid_t, ptr, int, ptr
    waitid: int, pid_t, ptr, int, ptr
    write: unsigned int, ptr, size_t
    writev: unsigned long, ptr, unsigned long
    """.strip().splitlines()
}


@functools.cache
def argument(syscall: str, index: int) -> tuple[int, str]:
    """(bits the kernel reads, how to name the argument) for `syscall`'s arg `index`."""
    proto = PROTOTYPES.get(syscall)
    types = [t.strip() for t in proto.split(",")] if proto else []
    if index >= len(types):
        return 64, f"{syscall}'s arg{index}"
    ctype = types[index]
    why = NARROWED.get((syscall, index))
    if why is not None:
        return 32, f"{syscall}'s arg{index} ({ctype}, but {why})"
    return TYPE_BITS[ctype], f"{syscall}'s arg{index} ({ctype})"


def bits(syscall: str, index: int) -> int:
    return argument(syscall, index)[0]


def covers_only_read_bits(syscall: str, cond: ArgCondition) -> bool:
    """True if `cond` looks at no bit the kernel ignores and ignores none it reads."""
    width = bits(syscall, cond.index)
    if width == 64:
        return True
    return cond.op is ArgOp.MASKED_EQ and not cond.mask & ~((1 << width) - 1) & _U64


def problem(syscall: str, cond: ArgCondition, written: str) -> str | None:
    """Why the test `written` (parsed as `cond`) on `syscall` can be dodged, or None.

    The message says what the kernel reads and gives the masked form to write.
    """
    if covers_only_read_bits(syscall, cond):
        return None
    width, what = argument(syscall, cond.index)
    low = (1 << width) - 1
    mask = f"{low:#x}"
    head = (f"{what} is {width} bits wide in the kernel, but seccomp compares the whole "
            f"64-bit register")
    if cond.op is ArgOp.MASKED_EQ:
        return (f"{head}: the mask {cond.mask:#x} tests bits above bit {width - 1}, which the "
                f"kernel ignores; keep the mask within {mask}")
    value = written.split(cond.op.value, 1)[1].strip() if cond.op.value in written else ""
    shown = value if value and not cond.value & ~low else f"{cond.value & low:#x}"
    dodge = (f'so "{written.strip()}" does not match {shown}|{1 << width:#x}, which the kernel '
             f"reads as {shown}")
    if cond.op is ArgOp.EQ:
        return f'{head}, {dodge}; write "arg{cond.index} & {mask} == {shown}"'
    return (f'{head}, so "{written.strip()}" can be dodged with the bits above bit {width - 1}; '
            f'only "arg{cond.index} & {mask} == VALUE" (or has-any/has-all/has-none within '
            f"{mask}) tests what the kernel reads: list the values it may take, one rule each")


def as_kernel_reads(syscall: str, conds: tuple[ArgCondition, ...]
                    ) -> list[tuple[ArgCondition, ...]]:
    """Alternatives (any may match) that test only the bits the kernel reads, with the
    meaning `conds` has for those bits; for profiles imported from formats (OCI) that
    compare whole registers. An order test becomes masked tests on aligned blocks."""
    choices: list[list[ArgCondition | None]] = []
    for c in conds:
        width = bits(syscall, c.index)
        if covers_only_read_bits(syscall, c) or c.op is ArgOp.MASKED_EQ:
            choices.append([c])
            continue
        top = (1 << width) - 1
        v = c.value
        ranges = {
            ArgOp.EQ: [(v, v)] if v <= top else [],
            ArgOp.NE: [(0, v - 1), (v + 1, top)] if v <= top else [(0, top)],
            ArgOp.LT: [(0, min(v, top + 1) - 1)],
            ArgOp.LE: [(0, min(v, top))],
            ArgOp.GT: [(v + 1, top)],
            ArgOp.GE: [(v, top)],
        }[c.op]
        blocks: list[ArgCondition | None] = []
        for lo, hi in ranges:
            while lo <= hi:
                size = lo & -lo if lo else 1 << width
                while size > hi - lo + 1:
                    size >>= 1
                # a block covering every value is no test at all
                blocks.append(None if size > top else
                              ArgCondition(c.index, ArgOp.MASKED_EQ, lo, top & ~(size - 1)))
                lo += size
        choices.append(blocks)
    return [tuple(c for c in combo if c is not None) for combo in itertools.product(*choices)]


def markdown_table() -> str:
    """The narrow arguments of every call, as docs/profiles.md lists them."""
    rows = ["| call | arguments the kernel reads as fewer than 64 bits |", "|---|---|"]
    for name in sorted(PROTOTYPES):
        narrow = []
        for i, ctype in enumerate(t.strip() for t in PROTOTYPES[name].split(",")):
            width = bits(name, i)
            why = NARROWED.get((name, i))
            if why is not None:
                narrow.append(f"arg{i} ({ctype}, but {why})")
            elif width < 64:
                narrow.append(f"arg{i} ({ctype}, {width} bits)")
        if narrow:
            rows.append(f"| `{name}` | {', '.join(narrow)} |")
    return "\n".join(rows)


__all__ = ["NARROWED", "PROTOTYPES", "TYPE_BITS", "argument", "as_kernel_reads", "bits",
           "covers_only_read_bits", "markdown_table", "problem"]
