"""Clip payloads inside shards: ``.npy`` (lossless uint8 T x H x W x C) or ``.mp4`` (H.264, lossy, ~10x smaller)."""

from __future__ import annotations

import io

import numpy as np

from ..vocab import CLIP_FORMATS


def encode_clip(clip: np.ndarray, fmt: str, fps: float | None = None) -> bytes:
    """clip: (T, H, W, C) uint8 with C in {1, 3}."""
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] not in (1, 3):
        raise ValueError(f"a clip must be uint8 (T, H, W, 1|3), got {clip.dtype} {clip.shape}")
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(clip), allow_pickle=False)
        return buf.getvalue()
    if fmt == "mp4":
        return encode_mp4(clip, fps or 25.0)
    raise ValueError(f"unknown clip format {fmt!r}; expected one of {CLIP_FORMATS}")


def decode_clip(payload: bytes, fmt: str, channels: int | None = None) -> np.ndarray:
    """Back to (T, H, W, C) uint8. ``channels`` says what an mp4 (always stored as colour) should return."""
    if fmt == "npy":
        return np.load(io.BytesIO(payload), allow_pickle=False)
    if fmt == "mp4":
        clip = decode_mp4(payload)
        return clip[..., :1] if channels == 1 else clip
    raise ValueError(f"unknown clip format {fmt!r}; expected one of {CLIP_FORMATS}")


def encode_mp4(clip: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """H.264 in MP4 (yuv420p, so H and W must be even). Grayscale is stored as three equal channels."""
    import av

    _, h, w, c = clip.shape
    if h % 2 or w % 2:
        raise ValueError(f"mp4 clips need an even frame size (yuv420p), got {h}x{w}; use --format npy")
    rgb = np.repeat(clip, 3, axis=-1) if c == 1 else clip
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps) or 25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # one thread keeps the bytes identical from run to run; clips are small, parallelism is per clip
        stream.options = {"crf": str(crf), "preset": "fast", "threads": "1"}
        for frame in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def decode_mp4(payload: bytes, max_frames: int = 4096) -> np.ndarray:
    """An mp4 clip's RGB frames; anything that is not an mp4 (told from its bytes) raises ContainerError."""
    from ..containers import ContainerError, decode_frames, open_video

    with open_video(io.BytesIO(payload), "an .mp4 clip", only="mp4") as container:
        if not container.streams.video:
            raise ContainerError("an .mp4 clip without a video stream")
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in decode_frames(container, stream, max_frames, "an .mp4 clip")]
    if not frames:
        raise ContainerError("an .mp4 clip without frames")
    return np.stack(frames)
