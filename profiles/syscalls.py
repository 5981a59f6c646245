"""System call names and numbers for the native architecture, and the named groups.

Names resolve through libseccomp's own table, so a profile means exactly what
the compiler will emit. The groups follow systemd's `SystemCallFilter=` sets
(src/shared/seccomp-util.c) member for member where systemd has them; the few
groups systemd lacks (`@memory`, `@time`, `@sandbox`) are warden's own and say so.
A group may name calls that do not exist on this architecture (for example
`chown32` on x86_64); those members are skipped when the group is expanded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from warden.profiles import libseccomp

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
# x32 shares AUDIT_ARCH_X86_64; its calls are told apart by this bit in nr.
X32_SYSCALL_BIT = 0x40000000

# libseccomp returns this for a name it has never heard of; names it knows
# from another architecture only come back as negative pseudo-numbers.
_NR_SCMP_ERROR = -1


@dataclass(frozen=True)
class Group:
    """A named set of syscalls ("@file-system"), possibly built from other groups."""

    name: str  # with the leading "@"
    help: str
    members: tuple[str, ...]  # call names and "@group" references
    origin: str = "systemd"  # "systemd" or "warden"


def _g(name: str, help: str, members: str, origin: str = "systemd") -> Group:
    return Group(name, help, tuple(members.split()), origin)


GROUPS: dict[str, Group] = {
    g.name: g
    for g in (
        _g(
            "@default",
            "System calls that are always permitted",
            """clock_getres clock_getres_time64 clock_gettime clock_gettime64
            clock_nanosleep clock_nanosleep_time64 execve exit exit_group futex
            futex_time64 get_robust_list get_thread_area getegid getegid32 geteuid
            geteuid32 getgid getgid32 getgroups getgroups32 getpgid getpgrp getpid
            getppid getresgid getresgid32 getresuid getresuid32 getrlimit getsid
            gettid gettimeofday getuid getuid32 membarrier nanosleep pause
            prlimit64 restart_syscall rseq rt_sigreturn sched_yield
            set_robust_list set_thread_area set_tid_address set_tls sigreturn time
            ugetrlimit""",
        ),
        _g(
            "@aio",
            "Asynchronous IO",
            """io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64
            io_setup io_submit io_uring_enter io_uring_register io_uring_setup""",
        ),
        _g(
            "@basic-io",
            "Basic IO",
            """_llseek close close_range dup dup2 dup3 lseek pread64 preadv preadv2
            pwrite64 pwritev pwritev2 read readv write writev""",
        ),
        _g(
            "@chown",
            "Change ownership of files and directories",
            "chown chown32 fchown fchown32 fchownat lchown lchown32",
        ),
        _g(
            "@clock",
            "Change the system time",
            """adjtimex clock_adjtime clock_adjtime64 clock_settime clock_settime64
            settimeofday stime""",
        ),
        _g(
            "@cpu-emulation",
            "System calls for CPU emulation functionality",
            "modify_ldt subpage_prot switch_endian vm86 vm86old",
        ),
        _g(
            "@debug",
            "Debugging, performance monitoring and tracing functionality",
            """lookup_dcookie perf_event_open pidfd_getfd ptrace rtas
            sys_debug_setcontext""",
        ),
        _g(
            "@file-system",
            "File system operations",
            """access chdir chmod close creat faccessat faccessat2 fallocate fchdir
            fchmod fchmodat fchmodat2 fcntl fcntl64 fgetxattr flistxattr fremovexattr
            fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 ftruncate
            ftruncate64 futimesat getcwd getdents getdents64 getxattr
            inotify_add_watch inotify_init inotify_init1 inotify_rm_watch lgetxattr
            link linkat listxattr llistxattr lremovexattr lsetxattr lstat lstat64
            mkdir mkdirat mknod mknodat mmap mmap2 munmap newfstatat oldfstat
            oldlstat oldstat open openat openat2 readlink readlinkat removexattr
            rename renameat renameat2 rmdir setxattr stat stat64 statfs statfs64
            statx symlink symlinkat truncate truncate64 unlink unlinkat utime
            utimensat utimensat_time64 utimes""",
        ),
        _g(
            "@io-event",
            "Event loop system calls",
            """_newselect epoll_create epoll_create1 epoll_ctl epoll_ctl_old
            epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 poll
            ppoll ppoll_time64 pselect6 pselect6_time64 select""",
        ),
        _g(
            "@ipc",
            "SysV IPC, POSIX Message Queues or other IPC",
            """ipc memfd_create mq_getsetattr mq_notify mq_open mq_timedreceive
            mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink msgctl
            msgget msgrcv msgsnd pipe pipe2 process_vm_readv process_vm_writev
            semctl semget semop semtimedop semtimedop_time64 shmat shmctl shmdt
            shmget""",
        ),
        _g("@keyring", "Kernel keyring access", "add_key keyctl request_key"),
        _g("@memlock", "Memory locking control", "mlock mlock2 mlockall munlock munlockall"),
        _g(
            "@memory",
            "Allocating, mapping and releasing memory (warden's own group)",
            "brk madvise mincore mmap mmap2 mprotect mremap munmap",
            "warden",
        ),
        _g(
            "@module",
            "Loading and unloading of kernel modules",
            "delete_module finit_module init_module",
        ),
        _g(
            "@mount",
            "Mounting and unmounting of file systems",
            """chroot fsconfig fsmount fsopen fspick mount mount_setattr move_mount
            open_tree pivot_root umount umount2""",
        ),
        _g(
            "@network-io",
            "Network or Unix socket IO, should not be needed if not network facing",
            """accept accept4 bind connect getpeername getsockname getsockopt listen
            recv recvfrom recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg
            sendto setsockopt shutdown socket socketcall socketpair""",
        ),
        _g(
            "@obsolete",
            "Unusual, obsolete or unimplemented system calls",
            """_sysctl afs_syscall bdflush break create_module ftime get_kernel_syms
            getpmsg gtty idle lock mpx prof profil putpmsg query_module security
            sgetmask ssetmask stty sysfs tuxcall ulimit uselib ustat vserver""",
        ),
        _g(
            "@pkey",
            "System calls used for memory protection keys",
            "pkey_alloc pkey_free pkey_mprotect",
        ),
        _g(
            "@privileged",
            "All system calls which need super-user capabilities",
            """@chown @clock @module @raw-io @reboot @swap _sysctl acct bpf capset
            chroot fanotify_init fanotify_mark nfsservctl open_by_handle_at
            pivot_root quotactl setdomainname setfsuid setfsuid32 setgroups
            setgroups32 sethostname setresuid setresuid32 setreuid setreuid32 setuid
            setuid32 vhangup""",
        ),
        _g(
            "@process",
            "Process control, execution, namespacing operations",
            """arch_prctl capget clone clone3 execveat fork getrusage kill pidfd_open
            pidfd_send_signal prctl rt_sigqueueinfo rt_tgsigqueueinfo setns
            swapcontext tgkill times tkill unshare vfork wait4 waitid waitpid""",
        ),
        _g(
            "@raw-io",
            "Raw I/O port access",
            "ioperm iopl pciconfig_iobase pciconfig_read pciconfig_write",
        ),
        _g("@reboot", "Reboot and reboot preparation/kexec", "kexec_file_load kexec_load reboot"),
        _g(
            "@resources",
            "Alter resource settings",
            """ioprio_set mbind migrate_pages move_pages nice sched_setaffinity
            sched_setattr sched_setparam sched_setscheduler set_mempolicy
            setpriority setrlimit""",
        ),
        _g(
            "@sandbox",
            "Applying further sandboxing to oneself (warden's own group)",
            "landlock_add_rule landlock_create_ruleset landlock_restrict_self seccomp",
            "warden",
        ),
        _g(
            "@setuid",
            "Operations for changing user/group credentials",
            """setgid setgid32 setgroups setgroups32 setregid setregid32 setresgid
            setresgid32 setresuid setresuid32 setreuid setreuid32 setuid setuid32""",
        ),
        _g(
            "@signal",
            "Process signal handling",
            """rt_sigaction rt_sigpending rt_sigprocmask rt_sigsuspend
            rt_sigtimedwait rt_sigtimedwait_time64 sigaction sigaltstack signal
            signalfd signalfd4 sigpending sigprocmask sigsuspend""",
        ),
        _g("@swap", "Enable/disable swap devices", "swapoff swapon"),
        _g(
            "@sync",
            "Synchronize files and memory to storage",
            "fdatasync fsync msync sync sync_file_range sync_file_range2 syncfs",
        ),
        _g(
            "@system-service",
            "General system service operations",
            """@aio @basic-io @chown @default @file-system @io-event @ipc @keyring
            @memlock @network-io @process @resources @setuid @signal @sync @timer
            brk capget capset copy_file_range fadvise64 fadvise64_64 flock
            get_mempolicy getcpu getpriority getrandom ioctl ioprio_get kcmp madvise
            mprotect mremap name_to_handle_at oldolduname olduname personality
            readahead readdir remap_file_pages sched_get_priority_max
            sched_get_priority_min sched_getaffinity sched_getattr sched_getparam
            sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
            sched_yield sendfile sendfile64 setfsgid setfsgid32 setfsuid setfsuid32
            setpgid setsid splice sysinfo tee umask uname userfaultfd vmsplice""",
        ),
        _g(
            "@time",
            "Reading clocks and sleeping, never setting them (warden's own group)",
            """clock_getres clock_getres_time64 clock_gettime clock_gettime64
            clock_nanosleep clock_nanosleep_time64 gettimeofday nanosleep time""",
            "warden",
        ),
        _g(
            "@timer",
            "Schedule operations by time",
            """alarm getitimer setitimer timer_create timer_delete timer_getoverrun
            timer_gettime timer_gettime64 timer_settime timer_settime64
            timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
            timerfd_settime64 times""",
        ),
    )
}


def number(name: str) -> int | None:
    """The native syscall number of `name`, or None if it has none on this arch."""
    nr = libseccomp.resolve_name(name)
    return nr if nr >= 0 else None


def is_known(name: str) -> bool:
    """True if libseccomp knows the name on any architecture."""
    return libseccomp.resolve_name(name) != _NR_SCMP_ERROR


@functools.cache
def native_table() -> dict[int, str]:
    """Every syscall number libseccomp knows for the native arch, with its name."""
    table: dict[int, str] = {}
    for nr in range(0, 1024):
        name = libseccomp.resolve_number(nr)
        if name is not None:
            table[nr] = name
    return table


def name_of(nr: int) -> str | None:
    return native_table().get(nr)


@functools.cache
def native_names() -> frozenset[str]:
    return frozenset(native_table().values())


def suggest(name: str) -> str | None:
    """The closest valid syscall or group name, for "did you mean" messages."""
    pool = list(GROUPS) if name.startswith("@") else sorted(native_names())
    import difflib  # only to word an error

    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return close[0] if close else None


def expand(group: str, _seen: tuple[str, ...] = ()) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Yield (syscall, path of groups that led to it) for every native member of `group`."""
    path = (*_seen, group)
    for member in GROUPS[group].members:
        if member.startswith("@"):
            yield from expand(member, path)
        elif number(member) is not None:
            yield member, path
