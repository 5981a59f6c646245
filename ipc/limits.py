"""Per-channel limits: every quota a peer can run into, named, with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to one channel (one peer).

    max_frame_bytes: a frame of this many bytes or more is invalid (`BadMessage`). The kernel
        caps one SEQPACKET datagram at about the socket send buffer (~208 KiB by default), so
        keep this below that (or raise SO_SNDBUF on both ends); larger data goes through a
        sealed memfd.
    max_fds_per_frame: more fds than this in one frame is invalid.
    max_calls_in_flight: calls from the peer not yet answered, and (asyncio side) handlers
        of the peer still running, one-way messages included; one more is a `CutOff`.
    max_fds_held: received fds from this peer still open in our process; more is a `CutOff`.
    max_send_queue_bytes / max_send_queue_frames: what we queue for a peer whose socket is
        full; past either the peer is cut off rather than waited for (asyncio side only).
    max_fds_queued: fds in frames queued for that peer (each one our own copy, e.g. the
        handles our replies return); one more is a `CutOff`. With max_fds_held this bounds
        the fds a peer makes us hold: max_fds_held + max_fds_queued.
    max_reads_per_wakeup: frames read from one peer per event-loop wakeup, so a flooding peer
        cannot starve the others.
    max_sealed_memory_bytes: largest SealedMemory a peer may pass (bigger is a `BadMessage`):
        reading it faults its pages into the receiver's memory.
    """

    max_frame_bytes: int = 128 * 1024
    max_fds_per_frame: int = 8
    max_calls_in_flight: int = 64
    max_fds_held: int = 64
    max_fds_queued: int = 64
    max_send_queue_bytes: int = 1024 * 1024
    max_send_queue_frames: int = 1024
    max_reads_per_wakeup: int = 16
    max_sealed_memory_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {value!r}")
        if self.max_frame_bytes < 64:
            raise ValueError(
                f"Limits.max_frame_bytes must be at least 64, got {self.max_frame_bytes}"
            )
        if self.max_fds_per_frame > 253:
            raise ValueError(
                f"Limits.max_fds_per_frame must be at most 253 (SCM_MAX_FD), "
                f"got {self.max_fds_per_frame}"
            )


DEFAULT_LIMITS = Limits()
