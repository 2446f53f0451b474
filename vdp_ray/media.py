"""Reading clips people hand us and writing what they look at: GIF / MP4 / PNG strips, curves.

Frames are uint8 (T, H, W, C), C in {1, 3}. Small frames (the 32x32 demo) are enlarged with nearest-neighbour
pixels for viewing, never for metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.sources import SourceError, folder_frames, video_frames
from .vocab import IMAGE_EXTS, VIDEO_EXTS

VIEW_MIN = 128  # frames smaller than this are enlarged (whole multiples) for GIFs and strips


class MediaError(ValueError):
    """An input that cannot be read, or an output that cannot be written; the message names the path."""


def read_frames(path: str | Path, start: int = 0, count: int | None = None) -> tuple[np.ndarray, float | None]:
    """Frames [start, start + count) of a video file or a folder of images, and the frame rate (None for
    folders). Reads no further than it needs."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file or folder")
    if path.is_dir():
        it, fps = folder_frames(str(path)), None
    elif path.suffix.lower() in (*VIDEO_EXTS, ".gif"):
        try:
            it, fps = video_frames(str(path))
        except SourceError as e:
            raise MediaError(f"{path}: {e}") from None
    else:
        raise MediaError(f"{path}: not a video ({' '.join(VIDEO_EXTS)} .gif) or a folder of {'/'.join(IMAGE_EXTS)}")
    frames = []
    try:
        for i, frame in enumerate(it):
            if i < start:
                continue
            frames.append(frame)
            if count is not None and len(frames) >= count:
                break
    except SourceError as e:
        raise MediaError(f"{path}: {e}") from None
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    if not frames:
        raise MediaError(f"{path}: no frames" + (f" at or after frame {start}" if start else ""))
    return np.stack(frames), fps


def enlarge(frames: np.ndarray, minimum: int = VIEW_MIN) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor until the shorter side is at least ``minimum``."""
    h, w = frames.shape[-3:-1]
    factor = max(1, -(-minimum // min(h, w)))
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def _rgb(frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def write_video(path: str | Path, frames: np.ndarray, fps: float = 4.0) -> Path:
    """A GIF (looping) or MP4 (H.264), chosen by the extension; small frames enlarged for viewing."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".gif", ".mp4"):
        raise MediaError(f"{path}: unknown output format {ext!r}; expected .gif or .mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(video_bytes(frames, ext[1:], fps))
    return path


def video_bytes(frames: np.ndarray, fmt: str, fps: float = 4.0) -> bytes:
    """The GIF or MP4 of ``frames`` (see ``write_video``), encoded in memory: no temporary files."""
    import io

    frames = _rgb(enlarge(frames))
    if fmt == "gif":
        from PIL import Image

        buf = io.BytesIO()
        images = [Image.fromarray(f) for f in frames]
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return buf.getvalue()
    from .data.codec import encode_mp4

    h, w = frames.shape[1:3]
    return encode_mp4(frames[:, : h - h % 2, : w - w % 2], fps)


def strip(rows: list[tuple[str, np.ndarray | None]], gap: int = 2) -> np.ndarray:
    """An image with one row of frames per (label, frames); rows may hold different frame counts (None =
    an empty row). Used for context | prediction | truth."""
    rows = [(label, _rgb(enlarge(f))) for label, f in rows if f is not None]
    h, w = rows[0][1].shape[1:3]
    width = max(len(f) for _, f in rows) * (w + gap) - gap
    image = np.full((len(rows) * (h + gap) - gap, width, 3), 255, np.uint8)
    for r, (_, frames) in enumerate(rows):
        for i, f in enumerate(frames):
            image[r * (h + gap) : r * (h + gap) + h, i * (w + gap) : i * (w + gap) + w] = f
    return image


def side_by_side(context: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The strip of a prediction: context frames then predicted frames in one row, then (if known) the
    context then the true future below, so each predicted frame sits above its truth."""
    rows = [("prediction", np.concatenate([context, prediction]))]
    if truth is not None:
        rows.append(("truth", np.concatenate([context, truth])))
    return strip(rows)


def animation(context: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """Frames of a side-by-side animation: [context then prediction | context then truth]; the predicted
    part is marked with a red border so it is clear which frames the model made."""
    seq = np.concatenate([context, prediction])
    panels = [_rgb(enlarge(seq)).copy()]
    panels[0][len(context) :, :3, :] = panels[0][len(context) :, -3:, :] = (220, 30, 30)
    panels[0][len(context) :, :, :3] = panels[0][len(context) :, :, -3:] = (220, 30, 30)
    if truth is not None:
        panels.append(_rgb(enlarge(np.concatenate([context, truth]))))
    gap = np.full((*panels[0].shape[:2], 4, 3), 255, np.uint8)
    out = panels[0]
    for p in panels[1:]:
        out = np.concatenate([out, gap, p], axis=2)
    return out


def write_png(path: str | Path, image: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def plot_curves(
    path: str | Path, curves: dict[str, list[float] | tuple[list, list]], xlabel: str, ylabel: str, title: str
) -> Path:
    """Lines (one per name) as a PNG: values against 1..N, or (xs, ys) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for name, curve in curves.items():
        xs, ys = curve if isinstance(curve, tuple) else (range(1, len(curve) + 1), curve)
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
