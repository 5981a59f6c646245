"""The interface both sides import: what a thumbnailer worker may answer, bounded."""

from __future__ import annotations

from typing import Annotated

import msgspec

from warden import ipc

Side = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class Thumbnail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    width: Side                  # of the original image
    height: Side
    size: Annotated[int, msgspec.Meta(ge=1, le=16)]              # thumbnail is size x size
    pixels: Annotated[bytes, msgspec.Meta(max_length=256)]       # grey levels, row by row


class Thumbnailer(ipc.Interface, name="examples.Thumbnailer"):
    @ipc.call()
    def thumbnail(self, ctx: ipc.Context, image: ipc.ReadFile) -> Thumbnail:
        """Decode a binary PGM (P5) image and shrink it to at most 16x16."""
        raise NotImplementedError
