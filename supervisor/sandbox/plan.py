"""The child's plan: every value the sandbox's setup needs, prepared by the parent."""

from __future__ import annotations

from typing import NamedTuple

from warden.supervisor.sandbox import mounts


class Plan(NamedTuple):
    """Everything the child needs, prepared and encoded by the parent before fork.

    (A NamedTuple rather than a dataclass: as immutable, and cheaper to define
    on `warden run`'s start-up path.)"""

    clone_flags: int
    parent_pidfd: int
    mount_ops: tuple[mounts.MountOp, ...]
    tmp_size: int
    shm_size: int
    chdir: bytes
    hostname: bytes
    share_net: bool
    early_rlimits: tuple[tuple[int, int, int], ...]
    late_rlimits: tuple[tuple[int, int, int], ...]
    fd_pairs: tuple[tuple[int, int], ...]
    landlock_abi: int
    landlock_rules: tuple[tuple[bytes, int], ...]
    argv: tuple[bytes, ...]
    envp: tuple[bytes, ...]
    search_path: tuple[bytes, ...]
    seccomp_filter: bytes
    guard_filter: bytes  # stacked under seccomp_filter (seccomp.parent_guard), or b""
    notify: bool
    last_cap: int
    drop_groups: bool  # drop the supplementary groups (setgroups is allowed: root, subids)
    map_ids: tuple[int, int]  # outer (uid, gid) that INNER_ID maps to
    self_maps: bool  # the init writes its own maps (ordinary user) instead of the parent
    map_helper: bool  # the parent maps through newuidmap/newgidmap (ordinary user, subids)
    clone_as: tuple[int, int] | None  # root: effective ids that create (own) the user namespace
    userns_limits: tuple[tuple[bytes, bytes], ...]  # /proc/sys/user limits the init lowers
    mask_proc_keys: bool
