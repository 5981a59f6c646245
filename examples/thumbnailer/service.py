"""The service: the trusted parent opens each upload, hands the fd to a sandboxed worker.

    python -m examples.thumbnailer.service

Two workers under the `strict` profile, started from the zygote. Hostile
images make their worker misbehave; it is killed, replaced, and the service
keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile

from warden import ipc, supervisor

from .api import Thumbnailer


def sample_images(d: str) -> list[str]:
    """A few uploads: two honest images, two hostile ones, one that is not an image."""
    def pgm(name: str, w: int, h: int, comment: bytes = b"") -> str:
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(b"P5\n" + comment + b"%d %d\n255\n" % (w, h)
                    + bytes((x * y) % 256 for y in range(h) for x in range(w)))
        return path

    notes = os.path.join(d, "notes.txt")
    with open(notes, "wb") as f:
        f.write(b"not an image")
    return [pgm("cat.pgm", 64, 48), pgm("steal.pgm", 8, 8, b"#exploit:steal\n"),
            pgm("dog.pgm", 32, 32), pgm("lie.pgm", 8, 8, b"#exploit:lie\n"),
            notes, pgm("bird.pgm", 20, 20)]


async def main() -> None:
    # The supervisor logs each worker event (bad message, seccomp kill, restart).
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="    [log] %(message)s")
    logging.getLogger("warden.ipc").setLevel(logging.ERROR)
    async with supervisor.Supervisor(start_method="zygote",
                                     zygote_preload=["examples.thumbnailer.worker"]) as sup:
        pool = await sup.pool(Thumbnailer, "examples.thumbnailer.worker:ThumbnailerImpl",
                              size=2, profile="strict", call_timeout=5)
        with tempfile.TemporaryDirectory() as d:
            for path in sample_images(d):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)   # the parent opens the upload
                try:
                    t = await pool.call("thumbnail", fd)    # the kernel passes a duplicate
                    print(f"{os.path.basename(path):12} ok: {t.width}x{t.height} -> "
                          f"{t.size}x{t.size} thumbnail")
                except supervisor.WorkerDied as e:
                    how = e.status.describe() if e.status else str(e)
                    print(f"{os.path.basename(path):12} refused, worker killed: {how}")
                except ipc.RemoteError as e:
                    print(f"{os.path.basename(path):12} rejected by the decoder: {e}")
                finally:
                    os.close(fd)
        await pool.full()    # replacements for the killed workers are up
        print(f"served {pool.calls_ok} thumbnails; {pool.restarts} worker(s) replaced; "
              f"{len(pool.workers)} alive")


if __name__ == "__main__":
    asyncio.run(main())
