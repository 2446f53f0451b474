"""Small synthetic media for tests: frames with known content, written as videos (PyAV) or PNG folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def moving_square_frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8: a noisy background and a bright square that moves one pixel per frame; the
    frame index is written into pixel (0, 0) so any frame can be recognised after a lossless round trip."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        y, x = (i * 2) % (h - 6), i % (w - 6)
        frames[i, y : y + 6, x : x + 6] = (250, 200, 100)
        frames[i, 0, 0] = (i % 256, i // 256, 7)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """By extension: .avi holds lossless PNG frames, .mkv lossless FFV1, .mp4/.mov/.webm lossy codecs."""
    import av

    codec, pix = {
        ".avi": ("png", "rgb24"),
        ".mkv": ("ffv1", "bgr0"),
        ".mp4": ("libx264", "yuv420p"),
        ".mov": ("libx264", "yuv420p"),
        ".webm": ("libvpx", "yuv420p"),
    }[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_frame_folder(folder: Path, frames: np.ndarray, ext: str = ".png") -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{i}{ext}")  # unpadded: natural sort must order them
    return folder


def read_shard_samples(directory: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """Every sample of a split folder, read with plain tarfile (independent of the code under test)."""
    import io
    import json
    import tarfile

    samples: dict[str, dict] = {}
    for tar_path in sorted(directory.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                samples.setdefault(key, {})[ext] = data
    out = {}
    for key, parts in samples.items():
        clip = np.load(io.BytesIO(parts["npy"])) if "npy" in parts else parts["mp4"]
        out[key] = (clip, json.loads(parts["json"]))
    return out


def gray_frames(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """(n, size, size, 1) uint8: a bright square moving one pixel per frame on a dark noisy field."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, (n, size, size, 1), dtype=np.uint8)
    for i in range(n):
        frames[i, 4 : 4 + 5, i % (size - 5) : i % (size - 5) + 5] = 230
    return frames


def png(frame: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(frames: np.ndarray) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, f in enumerate(frames):
            z.writestr(f"frame_{i}.png", png(f))  # natural order: frame_10 after frame_9
    return buf.getvalue()


def npz(body: bytes) -> dict:
    import io

    with np.load(io.BytesIO(body), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def digit_shards(out: Path, num_clips: int = 48) -> Path:
    """Moving-digits shards (8 frames of 32x32, one digit) split 3:1 into OUT/train and OUT/val."""
    from vdp_ray.data.shards import ShardOptions, shard

    shard(
        ShardOptions(
            out=str(out),
            synthetic="moving-digits",
            num_clips=num_clips,
            frames=8,
            size=(32, 32),
            split={"train": 0.75, "val": 0.25},
            digits=(1, 1),
        ),
        log=lambda *_: None,
    )
    return out


def corrupt_split(src: Path, dst: Path, every: int = 3, files: set[str] | None = None) -> list[str]:
    """A copy of shard split SRC in DST where every EVERY-th clip's .npy member is garbage (the tar and its
    manifest stay consistent, so only decoding finds it), in the shards named in FILES (default: all); returns
    the keys spoiled."""
    import io
    import json
    import tarfile

    dst.mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    spoiled: list[str] = []
    for entry in manifest["shards"]:
        with tarfile.open(src / entry["file"]) as tar_in, tarfile.open(dst / entry["file"], "w") as tar_out:
            keys = sorted({m.name.split(".", 1)[0] for m in tar_in.getmembers()})
            bad = set(keys[::every]) if files is None or entry["file"] in files else set()
            for m in tar_in.getmembers():
                data = tar_in.extractfile(m).read()
                key = m.name.split(".", 1)[0]
                if key in bad and m.name.endswith(".npy"):
                    data = b"\x93NUMPY garbage, not an array"
                info = tarfile.TarInfo(m.name)
                info.size = len(data)
                tar_out.addfile(info, io.BytesIO(data))
        entry["bytes"] = (dst / entry["file"]).stat().st_size
        spoiled += sorted(bad)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return spoiled
