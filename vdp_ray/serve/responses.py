"""Response bodies: the made frames as a GIF / MP4 (beside the given frames and the true future), an npz of arrays
(no pickles), or JSON with base64 PNGs and the request's metadata."""

from __future__ import annotations

import base64
import io
import json

import numpy as np


def encode(
    frames: np.ndarray, given: np.ndarray | None, truth: np.ndarray | None, fmt: str, fps: float, meta: dict
) -> bytes:
    """The response body. gif / mp4: the given frames then the made ones (a red border marks those), beside
    the true future when the upload had one, clips side by side; npz: arrays ``frames`` (made), ``context``
    (given), ``truth``; json: the same as base64 PNGs, with ``meta`` (model id, timing, parameters)."""
    from ..media import animation, video_bytes  # encoded in memory: a full temporary disk cannot fail a response

    clips = frames if frames.ndim == 5 else frames[None]
    if fmt == "npz":
        buf = io.BytesIO()
        arrays = {"frames": frames, "context": given, "truth": truth}
        np.savez_compressed(buf, **{k: v for k, v in arrays.items() if v is not None})  # no objects: no pickle
        return buf.getvalue()
    if fmt == "json":
        body = {**meta, "frames": [[png_b64(f) for f in clip] for clip in clips]}
        body["context"] = None if given is None else [png_b64(f) for f in given]
        body["truth"] = None if truth is None or not len(truth) else [png_b64(f) for f in truth]
        return json.dumps(body).encode()
    empty = np.zeros((0, *clips.shape[2:]), np.uint8)
    context = empty if given is None else given
    truth = truth if truth is not None and len(truth) else None
    if truth is not None and len(truth) < clips.shape[1]:  # a shorter true future: black frames after it
        truth = np.concatenate([truth, np.zeros((clips.shape[1] - len(truth), *truth.shape[1:]), np.uint8)])
    panels = [animation(context, clip, truth[: len(clip)] if truth is not None else None) for clip in clips]
    video = panels[0]
    gap = np.full((*video.shape[:2], 4, 3), 255, np.uint8)
    for panel in panels[1:]:  # generate with batch > 1: the clips side by side
        video = np.concatenate([video, gap, panel], axis=2)
    return video_bytes(video, fmt, fps)


def png_b64(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
