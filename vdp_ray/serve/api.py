"""The HTTP API's request side and response side, without Ray or a web framework: reading clips that
clients upload, checking every field, and encoding results. Every problem is an ``ApiError`` with a 4xx
status and a message naming the field; nothing here unpickles anything.

Clips arrive as a video (mp4, webm, gif, avi, mkv, mov: decoded with PyAV, never by extension alone), a
zip of PNG/JPEG frames (in name order), or JSON with base64 PNG/JPEG frames.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np

TASKS = ("predict", "generate", "interpolate", "refine")
FORMATS = {"gif": "image/gif", "mp4": "video/mp4", "npz": "application/x-npz", "json": "application/json"}
SAMPLERS = ("ddpm", "ddim", "dpm++")


class ApiError(Exception):
    """A request the API refuses: ``status`` (4xx), the ``field`` at fault and a message that says what was
    expected."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": self.message, "status": self.status}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the server's options set them."""

    max_upload_bytes: int = 32 * 1024 * 1024
    max_frames: int = 256  # frames in an upload, and frames asked for
    max_pixels: int = 1024 * 1024  # per frame of an upload (decoded), before any resize
    max_steps: int = 1000
    max_batch: int = 8  # clips one generate request may ask for


# ------------------------------------------------------------------------------------ parameters
@dataclass
class Params:
    task: str
    context: int | None = None
    future: int = 8
    frames: int | None = None  # generate: clip length
    batch: int = 1  # generate
    between: int | None = None  # interpolate
    strength: float = 0.5  # refine
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    format: str = "gif"
    resize: bool = False
    fps: float = 4.0
    prompt: str | None = None  # text-conditioned models
    text_guidance: float | None = None

    def sampling(self) -> dict:
        kw = {"sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "seed": self.seed}
        return {**kw, "text_guidance": self.text_guidance} if self.text_guidance is not None else kw

    def batch_key(self) -> tuple:
        """Requests with equal keys (and equal clip shapes) can share one batched sampling call; prompts may
        differ within a batch (each clip has its own)."""
        return (self.task, self.context, self.future, self.frames, self.between, self.strength, self.sampler,
                self.steps, self.guidance, self.seed, self.text_guidance)  # fmt: skip


FIELDS = {  # name: (type, tasks it applies to; None = all)
    "context": (int, ("predict",)),
    "future": (int, ("predict",)),
    "frames": (int, ("generate",)),
    "batch": (int, ("generate",)),
    "between": (int, ("interpolate",)),
    "strength": (float, ("refine",)),
    "sampler": (str, None),
    "steps": (int, None),
    "guidance": (float, None),
    "seed": (int, None),
    "format": (str, None),
    "resize": (bool, None),
    "fps": (float, None),
    "prompt": ("text", None),
    "text_guidance": (float, None),
}
MAX_PROMPT = 2000  # characters


def parse_params(task: str, raw: dict, limits: Limits, model: dict) -> Params:
    """Typed, range-checked parameters of one request (form fields, query parameters or JSON values, all
    accepted as strings too). ``model`` is ``Predictor.info()``."""
    unknown = sorted(k for k in raw if k not in FIELDS or (FIELDS[k][1] and task not in FIELDS[k][1]))
    if unknown:
        allowed = [k for k, (_, tasks) in FIELDS.items() if not tasks or task in tasks]
        raise ApiError(422, unknown[0], f"unknown parameter for /v1/{task}; expected some of {allowed}")
    p = Params(task=task)
    for name, value in raw.items():
        if value is None or value == "":
            continue
        setattr(p, name, _coerce(name, value, FIELDS[name][0]))

    if p.format not in FORMATS:
        raise ApiError(422, "format", f"expected one of {list(FORMATS)}, got {p.format!r}")
    if p.sampler is not None and p.sampler not in SAMPLERS:
        raise ApiError(422, "sampler", f"expected one of {list(SAMPLERS)}, got {p.sampler!r}")
    _range(p.steps, "steps", 1, limits.max_steps)
    _range(p.guidance, "guidance", 0.0, 50.0)
    _range(p.seed, "seed", 0, 2**63 - 1)
    _range(p.fps, "fps", 0.5, 60.0)
    _range(p.text_guidance, "text_guidance", 0.0, 50.0)
    if (p.prompt or p.text_guidance is not None) and not model.get("text"):
        field = "prompt" if p.prompt else "text_guidance"
        raise ApiError(422, field, "this model was trained without text (no text encoder); leave it out")
    if p.prompt is not None and len(p.prompt) > MAX_PROMPT:
        raise ApiError(422, "prompt", f"at most {MAX_PROMPT} characters, got {len(p.prompt)}")
    tc = model.get("temporal_compression", 1)
    if task == "predict":
        _range(p.future, "future", 1, limits.max_frames)
        _range(p.context, "context", 1, model["max_context"])
    elif task == "generate":
        p.frames = model["frames"] if p.frames is None else p.frames
        _range(p.frames, "frames", 1, limits.max_frames)
        _range(p.batch, "batch", 1, limits.max_batch)
    elif task == "interpolate":
        if p.between is None:
            raise ApiError(422, "between", "missing: how many frames to make between the first and the last")
        _range(p.between, "between", 1, min(limits.max_frames, model["frames"] - 2 * tc))
        if p.between % tc:
            raise ApiError(422, "between", f"must be a multiple of {tc} (the model's temporal compression)")
    elif task == "refine" and not 0.0 < p.strength <= 1.0:
        raise ApiError(422, "strength", f"must be in (0, 1], got {p.strength}")
    return p


def _coerce(name: str, value, kind):
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ApiError(422, name, f"expected true or false, got {str(value)[:40]!r}")
    if kind in (str, "text"):
        if not isinstance(value, str):
            raise ApiError(422, name, f"expected a string, got {type(value).__name__}")
        return " ".join(value.split()) if kind == "text" else value.strip().lower()
    if isinstance(value, bool):
        raise ApiError(422, name, f"expected a number, got {value}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(422, name, f"expected a number, got {str(value)[:40]!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ApiError(422, name, f"expected a finite number, got {value}")
    if kind is int:
        if number != int(number):
            raise ApiError(422, name, f"expected an integer, got {value}")
        return int(number)
    return number


def _range(value, name: str, lo, hi) -> None:
    if value is not None and not lo <= value <= hi:
        raise ApiError(422, name, f"must be in [{lo}, {hi}], got {value}")


# ----------------------------------------------------------------------------------------- clips
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
    from ..predict import fit_frames

    size, channels = tuple(model["size"]), model["channels"]
    if frames.shape[1:3] == size and frames.shape[3] == channels:
        return frames
    if not resize:
        raise ApiError(422, field, f"frames are {frames.shape[2]}x{frames.shape[1]} with {frames.shape[3]} "
                       f"channel(s); the model takes {size[1]}x{size[0]} with {channels}: send resize=true to "
                       "centre-crop and resize them")  # fmt: skip
    return fit_frames(frames, size, channels)


# -------------------------------------------------------------------------------------- responses
def encode(frames: np.ndarray, given: np.ndarray | None, truth: np.ndarray | None, fmt: str, fps: float,
           meta: dict) -> bytes:  # fmt: skip
    """The response body. gif / mp4: the given frames then the made ones (a red border marks those), beside
    the true future when the upload had one, clips side by side; npz: arrays ``frames`` (made), ``context``
    (given), ``truth``; json: the same as base64 PNGs, with ``meta`` (model id, timing, parameters)."""
    from ..media import animation

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


def video_bytes(frames: np.ndarray, fmt: str, fps: float) -> bytes:
    import tempfile
    from pathlib import Path

    from ..media import write_video

    with tempfile.TemporaryDirectory(prefix="vdp-serve-") as tmp:
        path = write_video(Path(tmp) / f"out.{fmt}", frames, fps=fps)
        return path.read_bytes()


def png_b64(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
