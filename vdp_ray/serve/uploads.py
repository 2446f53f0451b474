"""Clips that clients upload: a video (mp4/mov, webm/mkv, avi, gif: the container told from its bytes, never by
FFmpeg's probing, see ``containers.py``), a zip of PNG/JPEG frames (in name order), or JSON with base64 PNG/JPEG
frames. Every upload is read within the server's limits: frames, pixels per frame, decoded bytes, decoding time,
and for zips the members, their compression and the bytes they inflate to (counted as they inflate, not trusted
from the zip's directory). Each frame is fitted to the model as soon as it is decoded, so a request holds frames
of the model's size. Every problem is an ``ApiError`` naming the field; nothing is unpickled.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
import zipfile
import zlib
from collections.abc import Callable

import numpy as np

from ..containers import ContainerError, open_video
from ..vocab import CONTAINER_NAMES
from .api import ApiError, Limits

ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # bzip2 / LZMA: unbounded to inflate
CHUNK = 1 << 20
Fit = Callable[[np.ndarray, str], np.ndarray]


class Frames:
    """The frames of one upload as they are decoded: counted, their decoded bytes summed against the request's
    budget, the decoding deadline checked before each, all of one size, and each fitted to the model at once."""

    def __init__(self, limits: Limits, field: str, fit: Fit | None = None):
        self.limits, self.field, self.fit = limits, field, fit
        self.frames: list[np.ndarray] = []
        self.decoded = 0
        self.size: tuple[int, int, str] | None = None
        self.end = time.monotonic() + limits.decode_timeout_s

    def check_pixels(self, width: int, height: int, where: str) -> None:
        if width * height > self.limits.max_pixels:
            raise ApiError(
                413,
                where,
                f"a {width}x{height} frame exceeds the server's limit of {self.limits.max_pixels} pixels per frame",
            )

    def admit(self, width: int, height: int, name: str | None = None) -> None:
        """Before a frame's pixels are decoded: refuse it (413) if it passes any limit."""
        lim, where = self.limits, name or self.field
        self.check_pixels(width, height, where)
        if len(self.frames) >= lim.max_frames:
            raise ApiError(413, self.field, f"more than {lim.max_frames} frames (the server's limit)")
        self.decoded += width * height * 3
        if self.decoded > lim.max_decoded_bytes:
            raise ApiError(
                413,
                self.field,
                f"the frames decode to more than {lim.max_decoded_bytes / 2**20:g} MB "
                "(the server's limit): send fewer or smaller frames",
            )
        if time.monotonic() > self.end:
            raise ApiError(
                413,
                self.field,
                f"decoding took longer than {lim.decode_timeout_s:g} s (the server's "
                "limit): send fewer or smaller frames",
            )
        if self.size is None:
            self.size = (width, height, where)
        elif self.size[:2] != (width, height):
            raise ApiError(
                422,
                self.field,
                f"frames of different sizes ({self.size[2]} is {self.size[0]}x"
                f"{self.size[1]}, {where} is {width}x{height}); all must match",
            )

    def add(self, frame: np.ndarray) -> None:
        frame = frame[..., None] if frame.ndim == 2 else frame
        self.frames.append(self.fit(frame, self.field) if self.fit else frame)

    def stack(self) -> np.ndarray:
        if not self.frames:
            raise ApiError(415, self.field, "the upload holds no frames")
        channels = {f.shape[-1] for f in self.frames}
        if len(channels) > 1:
            raise ApiError(
                422,
                self.field,
                "frames with different channel counts (grayscale and colour); all must match, or send resize=true",
            )
        return np.stack(self.frames).astype(np.uint8, copy=False)


def decode_clip(data: bytes, limits: Limits, field: str = "file", fit: Fit | None = None) -> np.ndarray:
    """uint8 (T, H, W, C) from uploaded bytes: a zip of PNG/JPEG frames, one PNG/JPEG, or a video in one of the
    containers we open. ``fit`` (see ``model_fit``) maps each decoded frame to the model's size."""
    if not data:
        raise ApiError(400, field, "empty upload")
    frames = Frames(limits, field, fit)
    if data[:4] == b"PK\x03\x04":
        _zip_frames(data, frames)
    elif data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        _image(data, frames, field)
    else:
        _video_frames(data, frames)
    return frames.stack()


def _video_frames(data: bytes, frames: Frames) -> None:
    field = frames.field
    unreadable = f"not a readable video: send {CONTAINER_NAMES}, or a zip of PNG/JPEG frames"
    try:
        with open_video(io.BytesIO(data), field) as container:
            streams = container.streams.video
            if not streams:
                raise ApiError(415, field, "no video stream in the upload")
            stream = streams[0]
            frames.check_pixels(stream.codec_context.width, stream.codec_context.height, field)  # before decoding
            for frame in container.decode(stream):
                frames.admit(frame.width, frame.height)
                frames.add(frame.to_ndarray(format="rgb24"))
    except ApiError:
        raise
    except ContainerError:
        raise ApiError(415, field, unreadable + f" (told from its first bytes, {data[:8]!r})") from None
    except Exception:  # FFmpeg's many errors all mean: not a clip we can read
        raise ApiError(415, field, unreadable) from None


def _zip_frames(data: bytes, frames: Frames) -> None:
    """Members are read in chunks against the bytes they may inflate to (each one, and all together: the upload
    limit, since PNG/JPEG frames hardly compress); only stored or deflated members are inflated at all."""
    field, limits = frames.field, frames.limits
    budget = limits.max_upload_bytes
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
        if len(infos) > 2 * limits.max_frames + 16:
            raise ApiError(
                413, field, f"a zip of {len(infos)} members; the server reads at most {2 * limits.max_frames + 16}"
            )
        frames_in = (i for i in infos if i.filename.lower().endswith((".png", ".jpg", ".jpeg")) and not i.is_dir())
        members = sorted(frames_in, key=lambda i: _natural(i.filename))
        if not members:
            raise ApiError(415, field, "the zip holds no .png/.jpg frames")
        if len(members) > limits.max_frames:
            raise ApiError(413, field, f"{len(members)} frames; the server's limit is {limits.max_frames}")
        for info in members:
            name = f"{field}:{info.filename[:100]}"
            if info.compress_type not in ZIP_METHODS:
                raise ApiError(
                    415, name, f"compressed with zip method {info.compress_type}; frames must be stored or deflated"
                )
            if info.flag_bits & 0x1:
                raise ApiError(415, name, "an encrypted zip member")
            raw = _inflate(archive, info, budget, name)
            budget -= len(raw)
            _image(raw, frames, name)
    except ApiError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        NotImplementedError,
        OverflowError,
    ):
        raise ApiError(415, field, "a corrupt zip: send a zip of PNG/JPEG frames") from None


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, name: str) -> bytes:
    """A member's bytes, read a chunk at a time and cut off past ``budget`` (whatever its header declares)."""
    too_big = ApiError(
        413,
        name,
        f"inflates past {budget} bytes, what is left of the server's limit on the bytes it reads from one upload",
    )
    if info.file_size > budget:  # the declared size, refused at once when honest...
        raise too_big
    parts, size = [], 0
    with archive.open(info) as member:  # ...and counted as it inflates when not
        while chunk := member.read(min(CHUNK, budget - size + 1)):
            size += len(chunk)
            if size > budget:
                raise too_big
            parts.append(chunk)
    return b"".join(parts)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _image(data: bytes, frames: Frames, field: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ("PNG", "JPEG"):
            raise ApiError(415, field, f"a {image.format} image; frames must be PNG or JPEG")
        frames.admit(image.width, image.height, field)
        image = image.convert("L") if image.mode in ("L", "1", "I;16", "I") else image.convert("RGB")
        frames.add(np.asarray(image))
    except ApiError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        zlib.error,
        Image.DecompressionBombError,
    ):
        raise ApiError(415, field, "not a readable PNG/JPEG image") from None


def decode_json_frames(value, limits: Limits, field: str = "frames", fit: Fit | None = None) -> np.ndarray:
    """JSON ``frames``: a list of base64 PNG/JPEG images (data: URLs accepted)."""
    if not isinstance(value, list) or not value:
        raise ApiError(422, field, "expected a non-empty list of base64-encoded PNG/JPEG frames")
    if len(value) > limits.max_frames:
        raise ApiError(413, field, f"{len(value)} frames; the server's limit is {limits.max_frames}")
    frames = Frames(limits, field, fit)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ApiError(422, f"{field}[{i}]", f"expected a base64 string, got {type(item).__name__}")
        text = item.split(",", 1)[1] if item.startswith("data:") else item
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, f"{field}[{i}]", "not valid base64") from None
        _image(raw, frames, f"{field}[{i}]")
    return frames.stack()


def model_fit(model: dict, resize: bool) -> Fit:
    """Each frame at the model's resolution and channels: as is, or (``resize``) centre-cropped and resized;
    refused otherwise (at the first frame), naming both sizes. ``model`` is ``Predictor.info()``."""
    from ..pixels import fit_frames

    size, channels = tuple(model["size"]), model["channels"]

    def fit(frame: np.ndarray, field: str) -> np.ndarray:
        if frame.shape[:2] == size and frame.shape[2] == channels:
            return frame
        if not resize:
            raise ApiError(
                422,
                field,
                f"frames are {frame.shape[1]}x{frame.shape[0]} with {frame.shape[2]} "
                f"channel(s); the model takes {size[1]}x{size[0]} with {channels}: send resize=true to "
                "centre-crop and resize them",
            )
        return fit_frames(frame[None], size, channels)[0]

    return fit
