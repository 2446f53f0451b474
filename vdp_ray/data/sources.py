"""Where clips come from: video files (PyAV), folders of frames, and how frames become fixed-size clips.

Everything here is plain Python + numpy and runs inside Ray tasks; errors are raised as ``SourceError``
with a reason a person can act on, and the caller decides whether to skip or stop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pixels import centre_crop_box
from ..vocab import IMAGE_EXTS, RESIZE_MODES, VIDEO_EXTS


class SourceError(Exception):
    """A source that cannot give clips; the message says why."""


@dataclass(frozen=True)
class Source:
    path: str
    kind: str  # "video" | "frames"
    split: str | None = None  # fixed by a dataset.yaml; otherwise assigned later


@dataclass(frozen=True)
class ClipSpec:
    """How frames are cut into clips and resized."""

    frames: int
    size: tuple[int, int]  # (H, W)
    stride: int  # source frames between the starts of consecutive clips
    interval: int = 1  # take every interval-th source frame
    resize: str = "crop"
    grayscale: bool = False

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.frames - 1) * self.interval + 1


def natural_key(name: str) -> list:
    """'frame10.png' sorts after 'frame9.png'."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def discover(paths: Iterable[str | Path]) -> tuple[list[Source], list[dict]]:
    """Video files and frame folders under the given paths, plus the paths that held nothing usable."""
    sources: list[Source] = []
    skipped: list[dict] = []
    for raw in paths:
        path = Path(raw)
        found: list[Source] = []
        if not path.exists():
            skipped.append({"path": str(path), "reason": "does not exist"})
            continue
        if path.is_file():
            if path.suffix.lower() in VIDEO_EXTS:
                found.append(Source(str(path), "video"))
            else:
                skipped.append({"path": str(path), "reason": f"not a video file (expected one of {VIDEO_EXTS})"})
                continue
        else:
            for sub in sorted([path, *(p for p in path.rglob("*") if p.is_dir())], key=lambda p: natural_key(str(p))):
                files = [f for f in sub.iterdir() if f.is_file()]
                found += [Source(str(f), "video") for f in sorted(files) if f.suffix.lower() in VIDEO_EXTS]
                if any(f.suffix.lower() in IMAGE_EXTS for f in files):
                    found.append(Source(str(sub), "frames"))
        if not found:
            skipped.append({"path": str(path), "reason": "empty source: no video files or frame folders found"})
        sources += found
    return sources, skipped


def fit_frame(frame: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Resize one (h, w, 3) uint8 frame to spec.size: centre crop to the aspect (default), pad, or stretch."""
    from PIL import Image

    th, tw = spec.size
    img = Image.fromarray(frame)
    w, h = img.size
    if spec.resize == "crop":
        top, left, ch, cw = centre_crop_box(h, w, th, tw)  # the source region with the target aspect
        img = img.resize((tw, th), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    elif spec.resize == "pad":
        scale = min(tw / w, th / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (tw, th))
        canvas.paste(img.resize((nw, nh), Image.Resampling.BICUBIC), ((tw - nw) // 2, (th - nh) // 2))
        img = canvas
    elif spec.resize == "stretch":
        img = img.resize((tw, th), Image.Resampling.BICUBIC)
    else:
        raise ValueError(f"unknown resize mode {spec.resize!r}; expected one of {RESIZE_MODES}")
    if spec.grayscale:
        return np.asarray(img.convert("L"))[..., None]
    return np.asarray(img)


def video_frames(path: str) -> tuple[Iterator[np.ndarray], float | None]:
    """Decoded RGB frames of a video, streamed, and its frame rate."""
    from ..containers import open_video

    try:
        container = open_video(path, Path(path).name)
        streams = container.streams.video
        if not streams:
            container.close()
            raise SourceError("no video stream")
        stream = streams[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate) if stream.average_rate else None
    except SourceError:
        raise
    except Exception as exc:  # PyAV raises a family of FFmpeg errors; all mean "cannot read this"
        raise SourceError(f"unreadable video: {exc}") from None

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except Exception as exc:
            raise SourceError(f"corrupt video (decoding failed): {exc}") from None
        finally:
            container.close()

    return frames(), fps


def folder_frames(path: str) -> Iterator[np.ndarray]:
    """Frames of a folder of images in natural order; all must share one size."""
    from PIL import Image

    files = sorted(
        (f for f in Path(path).iterdir() if f.suffix.lower() in IMAGE_EXTS), key=lambda f: natural_key(f.name)
    )
    first_size = None
    for f in files:
        try:
            with Image.open(f) as img:
                frame = np.asarray(img.convert("RGB"))
        except Exception as exc:
            raise SourceError(f"unreadable image {f.name}: {exc}") from None
        if first_size is None:
            first_size = (frame.shape[1], frame.shape[0], files[0].name)
        elif (frame.shape[1], frame.shape[0]) != first_size[:2]:
            raise SourceError(
                f"frames of mixed sizes: {first_size[2]} is {first_size[0]}x{first_size[1]}, "
                f"{f.name} is {frame.shape[1]}x{frame.shape[0]}"
            )
        yield frame


def sliding_clips(frames: Iterable[np.ndarray], spec: ClipSpec) -> Iterator[tuple[int, np.ndarray]]:
    """Every clip of a sliding window: (start frame, clip (T, H, W, C) uint8), streaming.

    Clip j covers source frames s_j + k * interval (k < T) with s_j = j * stride. Frames are resized as they
    are decoded and only while some window still needs them, so memory holds one window of small frames,
    never the whole video.
    """
    kept: dict[int, np.ndarray] = {}
    start = 0
    for index, frame in enumerate(frames):
        if _needed(index, spec):
            kept[index] = fit_frame(frame, spec)
        if index == start + spec.span - 1:
            yield start, np.stack([kept[start + k * spec.interval] for k in range(spec.frames)])
            start += spec.stride
            for old in [i for i in kept if i < start]:
                del kept[old]


def _needed(index: int, spec: ClipSpec) -> bool:
    """Is source frame ``index`` in any clip: some start s <= index < s + span with (index - s) % interval == 0?"""
    first = max(0, -(-(index - spec.span + 1) // spec.stride))
    return any((index - j * spec.stride) % spec.interval == 0 for j in range(first, index // spec.stride + 1))


def source_clips(source: Source, spec: ClipSpec) -> tuple[Iterator[tuple[int, np.ndarray]], float | None, list[int]]:
    """Clips of one source, its fps (None for frame folders) and a one-item list that ends up holding the
    number of source frames read (filled when the iterator is exhausted)."""
    if source.kind == "video":
        frames, fps = video_frames(source.path)
    else:
        frames, fps = folder_frames(source.path), None
    counter = [0]

    def counted() -> Iterator[np.ndarray]:
        for frame in frames:
            counter[0] += 1
            yield frame

    return sliding_clips(counted(), spec), fps, counter
