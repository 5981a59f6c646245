"""The worker: a deliberately naive PGM decoder, run under the `strict` profile.

It can read the fd it is handed and nothing else: no open, no socket, no
exec. To show what happens when a decoder is compromised, two "exploit"
markers in an image's comment make it misbehave as an attacker would.
"""

from __future__ import annotations

import os

from warden import ipc

from .api import Thumbnail, Thumbnailer


class ThumbnailerImpl(Thumbnailer):
    def thumbnail(self, ctx: ipc.Context, image: ipc.ReadFile) -> Thumbnail:
        with image:
            data = os.pread(image.fileno(), 1 << 20, 0)
        if b"#exploit:steal" in data:    # a hijacked decoder reaches for a secret...
            os.open("/etc/shadow", os.O_RDONLY)          # ...and strict kills it on the spot
        if b"#exploit:lie" in data:      # ...or lies to its parent with an out-of-range reply
            return Thumbnail(width=10**9, height=1, size=1, pixels=b"\0")
        fields = data.split(maxsplit=4)  # b"P5", width, height, maxval, pixels
        if len(fields) < 5 or fields[0] != b"P5":
            raise ipc.CallFailed("not a binary PGM (P5) image")
        w, h, maxval = int(fields[1]), int(fields[2]), int(fields[3])
        pixels = fields[4][: w * h]
        if len(pixels) < w * h or not 0 < maxval < 256:
            raise ipc.CallFailed("truncated or unsupported PGM")
        n = min(16, w, h)
        out = bytes(pixels[(y * h // n) * w + (x * w // n)] * 255 // maxval
                    for y in range(n) for x in range(n))
        return Thumbnail(width=w, height=h, size=n, pixels=out)
