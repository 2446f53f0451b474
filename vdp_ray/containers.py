"""Which video containers we open, chosen from the bytes' signature and never by FFmpeg's probing.

Left to probe, FFmpeg tries every demuxer it has: a short SDP text opens an RTP session (it binds UDP ports and
waits for ever), an ``ffconcat`` or HLS playlist opens files relative to the working directory and returns their
frames. So every reader of videos (uploads to the server, ``vdp shard``'s sources, ``vdp predict``, the mp4 clips
inside shards) goes through ``open_video``: the container is read from the first bytes, its demuxer is forced,
and anything else is refused with the name of what was given. ``decode_frames`` bounds the frames decoded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .vocab import CONTAINER_NAMES

HEAD_BYTES = 16
ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")  # the first box of an mp4 / QuickTime


class ContainerError(ValueError):
    """Bytes that are not one of the containers we open, or a decode past its limits; the message says which."""


def container_format(head: bytes) -> str | None:
    """The FFmpeg demuxer for bytes starting with ``head`` (at least 12 bytes), or None when they are none of
    mp4/mov, Matroska/WebM, AVI or GIF."""
    if head[4:8] in ISO_BOXES:
        return "mp4"  # FFmpeg's mov demuxer (external data references stay off, its default)
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def open_video(source: str | Path | BinaryIO, name: str | None = None, only: str | None = None):
    """A PyAV input container for a file path or a seekable binary file object, its demuxer forced from the
    signature (``only``: that container and no other). Raises ContainerError naming ``name`` (default: the path)
    for anything else."""
    import av

    label = name or str(source)
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            head = f.read(HEAD_BYTES)
        target = str(source)
    else:
        position = source.tell()
        head = source.read(HEAD_BYTES)
        source.seek(position)
        target = source
    fmt = container_format(head)
    what = f"not a video we open ({CONTAINER_NAMES})" if only is None else f"not an {only}"
    if fmt is None or (only is not None and fmt != only):
        raise ContainerError(f"{label}: {what} (told from its first bytes, which are {head[:8]!r})")
    return av.open(target, mode="r", format=fmt)


def decode_frames(container, stream, max_frames: int, name: str = "video") -> Iterator:
    """The stream's decoded frames (PyAV VideoFrames), at most ``max_frames``; past that, ContainerError naming
    ``name``."""
    for count, frame in enumerate(container.decode(stream), 1):
        if count > max_frames:
            raise ContainerError(f"{name}: more than {max_frames} frames")
        yield frame
