"""Clips that clients upload: a video (mp4, webm, gif, avi, mkv, mov: decoded with PyAV, never by extension alone),
a zip of PNG/JPEG frames (in name order), or JSON with base64 PNG/JPEG frames; each read within the server's
limits, and fitted to the model. Every problem is an ``ApiError`` naming the field; nothing is unpickled.
"""

from __future__ import annotations

import base64
import binascii
import io
import zipfile

import numpy as np

from .api import ApiError, Limits


def decode_clip(data: bytes, limits: Limits, field: str = "file") -> np.ndarray:
    """uint8 (T, H, W, C) from uploaded bytes: a zip of PNG/JPEG frames, or a video / GIF PyAV can read."""
    if not data:
        raise ApiError(400, field, "empty upload")
    if data[:4] == b"PK\x03\x04":
        return _zip_frames(data, limits, field)
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        return _stack([_image(data, limits, field)], field)
    return _video_frames(data, limits, field)


def _video_frames(data: bytes, limits: Limits, field: str) -> np.ndarray:
    import av

    frames = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = container.streams.video
            if not streams:
                raise ApiError(415, field, "no video stream in the upload")
            stream = streams[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > limits.max_pixels:
                raise ApiError(413, field, f"frames of {w}x{h} exceed the server's limit of {limits.max_pixels} pixels")
            for frame in container.decode(stream):
                if len(frames) >= limits.max_frames:
                    raise ApiError(413, field, f"more than {limits.max_frames} frames (the server's limit)")
                if frame.width * frame.height > limits.max_pixels:
                    raise ApiError(413, field, f"frames exceed the server's limit of {limits.max_pixels} pixels")
                frames.append(frame.to_ndarray(format="rgb24"))
    except ApiError:
        raise
    except Exception:  # FFmpeg's many errors all mean: not a clip we can read
        raise ApiError(
            415, field, "not a readable video: send an mp4, webm or gif, or a zip of PNG/JPEG frames"
        ) from None
    if not frames:
        raise ApiError(415, field, "the video holds no frames")
    return _stack(frames, field)


def _zip_frames(data: bytes, limits: Limits, field: str) -> np.ndarray:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = sorted(
            (n for n in archive.namelist() if n.lower().endswith((".png", ".jpg", ".jpeg")) and not n.endswith("/")),
            key=_natural,
        )
        if not names:
            raise ApiError(415, field, "the zip holds no .png/.jpg frames")
        if len(names) > limits.max_frames:
            raise ApiError(413, field, f"{len(names)} frames; the server's limit is {limits.max_frames}")
        frames = []
        for name in names:
            info = archive.getinfo(name)
            if info.file_size > limits.max_upload_bytes:  # a zip bomb is refused before it is inflated
                raise ApiError(413, field, f"{name}: {info.file_size} bytes inflated; over the server's limit")
            frames.append(_image(archive.read(name), limits, f"{field}:{name}"))
    except ApiError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, RuntimeError, NotImplementedError):
        raise ApiError(415, field, "a corrupt zip: send a zip of PNG/JPEG frames") from None
    return _stack(frames, field)


def _natural(name: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _image(data: bytes, limits: Limits, field: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ("PNG", "JPEG"):
            raise ApiError(415, field, f"a {image.format} image; frames must be PNG or JPEG")
        if image.width * image.height > limits.max_pixels:
            raise ApiError(413, field, f"a {image.width}x{image.height} frame exceeds {limits.max_pixels} pixels")
        image = image.convert("L") if image.mode in ("L", "1", "I;16", "I") else image.convert("RGB")
        return np.asarray(image)
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ApiError(415, field, "not a readable PNG/JPEG image") from None


def _stack(frames: list[np.ndarray], field: str) -> np.ndarray:
    frames = [f[..., None] if f.ndim == 2 else f for f in frames]
    if len({f.shape for f in frames}) != 1:
        shapes = sorted({f"{f.shape[1]}x{f.shape[0]}x{f.shape[2]}" for f in frames})
        raise ApiError(422, field, f"frames of different sizes ({', '.join(shapes[:3])}); all must match")
    return np.stack(frames).astype(np.uint8)


def decode_json_frames(value, limits: Limits, field: str = "frames") -> np.ndarray:
    """JSON ``frames``: a list of base64 PNG/JPEG images (data: URLs accepted)."""
    if not isinstance(value, list) or not value:
        raise ApiError(422, field, "expected a non-empty list of base64-encoded PNG/JPEG frames")
    if len(value) > limits.max_frames:
        raise ApiError(413, field, f"{len(value)} frames; the server's limit is {limits.max_frames}")
    frames = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ApiError(422, f"{field}[{i}]", f"expected a base64 string, got {type(item).__name__}")
        text = item.split(",", 1)[1] if item.startswith("data:") else item
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, f"{field}[{i}]", "not valid base64") from None
        frames.append(_image(raw, limits, f"{field}[{i}]"))
    return _stack(frames, field)


def fit_to_model(frames: np.ndarray, model: dict, resize: bool, field: str = "file") -> np.ndarray:
    """The clip at the model's resolution and channels: as is, or (``resize``) centre-cropped and resized;
    refused otherwise, naming both sizes."""
    from ..pixels import fit_frames

    size, channels = tuple(model["size"]), model["channels"]
    if frames.shape[1:3] == size and frames.shape[3] == channels:
        return frames
    if not resize:
        raise ApiError(422, field, f"frames are {frames.shape[2]}x{frames.shape[1]} with {frames.shape[3]} "
                       f"channel(s); the model takes {size[1]}x{size[0]} with {channels}: send resize=true to "
                       "centre-crop and resize them")  # fmt: skip
    return fit_frames(frames, size, channels)
