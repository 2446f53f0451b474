"""What `vdp shard` is asked to do: its options, their checks, a dataset.yaml, and the plan a run follows (the
sources, their splits and captions, the clip geometry), all decided on the driver before any Ray work."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..options import REQUIRED, arg
from ..vocab import CLIP_FORMATS, RESIZE_MODES, SYNTHETIC
from .captions import CaptionError, captions_for, load_captions
from .sources import ClipSpec, Source, discover


class ShardError(Exception):
    """Bad options or a failed run; the message names the flag or file."""


SOURCES = "what to shard (one of)"
DIGITS = "synthetic data (moving digits, photo pans)"


def parse_split(text: str) -> dict[str, float]:
    """'train=0.9,val=0.1' -> {'train': 0.9, 'val': 0.1}; a bare '0.9' means train=0.9,val=0.1."""
    text = text.strip()
    try:
        if "=" not in text:
            frac = float(text)
            return {"train": frac, "val": round(1 - frac, 10)}
        out = {}
        for item in text.split(","):
            name, _, value = item.partition("=")
            out[name.strip()] = float(value)
        return out
    except ValueError:
        raise ShardError(f"--split {text!r}: expected name=fraction pairs such as train=0.9,val=0.1") from None


@dataclass
class ShardOptions:
    out: str = arg(REQUIRED, "output folder: OUT/<split>/shard-*.tar + manifest.json")
    sources: list[str] = arg(
        [], "video files or folders of them / of frame folders", flag="--source", metavar="PATH", group=SOURCES
    )
    dataset: str | None = arg(
        None, "a YOLO-style dataset.yaml with train/val/test paths", metavar="YAML", group=SOURCES
    )
    synthetic: str | None = arg(None, "generate a synthetic data set", choices=SYNTHETIC, group=SOURCES)
    frames: int | None = arg(None, "frames per clip (default 16, or context+future of the dataset.yaml)")
    size: tuple[int, int] | None = arg(None, "frame size (default 64 64)", metavar=("H", "W"))
    stride: int | None = arg(None, "source frames between clip starts (default: one clip, no overlap)")
    interval: int | None = arg(None, "take every I-th source frame (default 1, or the dataset.yaml's frame_interval)")
    split: dict[str, float] | None = arg(
        None, "split by source video, e.g. train=0.9,val=0.1 (default: all train)", parse=parse_split
    )
    shard_size: int = arg(256, "clips per shard")
    resize: str = arg("crop", "keep aspect by centre crop, pad, or stretch", choices=RESIZE_MODES)
    grayscale: bool = arg(False, "store one channel (moving digits always do)")
    format: str = arg("npy", "clip encoding: npy (lossless) or mp4 (H.264, ~10x smaller)", choices=CLIP_FORMATS)
    captions: str | None = arg(
        None,
        "captions per video: CSV (video,caption), JSON {video: caption(s)} or MSR-VTT "
        "annotation JSON; sidecar clip.txt files beside the videos are always read",
        metavar="FILE",
    )
    seed: int = arg(0, "split assignment, clip order and synthetic content")
    strict: bool = arg(False, "fail (exit 1) on any unreadable, corrupt or too-short source")
    num_clips: int = arg(1000, "clips to generate", group=DIGITS)
    digits: tuple[int, int] = arg((1, 3), "moving digits: digits per clip", metavar=("MIN", "MAX"), group=DIGITS)
    stochastic: bool = arg(False, "moving digits: redraw velocities at random bounces", group=DIGITS)
    sprites: tuple[int, int] = arg(
        (0, 0), "photo pans: moving sprites (discs) per clip", metavar=("MIN", "MAX"), group=DIGITS
    )
    still: bool = arg(
        False, "photo pans: a still camera in every clip (static footage; sprites still move)", group=DIGITS
    )
    noise: float = arg(1.0, "photo pans: sensor noise, std in grey levels per pixel and frame", group=DIGITS)


# ------------------------------------------------------------------------------------------ options
def check(opts: ShardOptions) -> None:
    """Every option on its own, before any work: the error names the flag."""
    if opts.frames is not None and opts.frames < 1:
        raise ShardError(f"--frames must be >= 1, got {opts.frames}")
    if opts.size is not None and (len(opts.size) != 2 or min(opts.size) < 2):
        raise ShardError(f"--size needs two values >= 2 (height width), got {opts.size}")
    for flag, value in (("--stride", opts.stride), ("--interval", opts.interval), ("--shard-size", opts.shard_size)):
        if value is not None and value < 1:
            raise ShardError(f"{flag} must be >= 1, got {value}")
    if opts.resize not in RESIZE_MODES:
        raise ShardError(f"--resize {opts.resize!r}: expected one of {RESIZE_MODES}")
    if opts.format not in CLIP_FORMATS:
        raise ShardError(f"--format {opts.format!r}: expected one of {CLIP_FORMATS}")
    if opts.synthetic is not None and opts.synthetic not in SYNTHETIC:
        raise ShardError(f"--synthetic {opts.synthetic!r}: expected one of {SYNTHETIC}")
    if opts.synthetic is None and not opts.sources and not opts.dataset:
        raise ShardError("nothing to shard: give --source PATH, --dataset dataset.yaml or --synthetic moving-digits")
    if opts.split:
        bad = [k for k, v in opts.split.items() if not re.fullmatch(r"[A-Za-z0-9_-]+", k) or not 0 <= v <= 1]
        if bad or abs(sum(opts.split.values()) - 1) > 1e-6:
            raise ShardError(f"--split {opts.split}: names are plain words and fractions in [0, 1] summing to 1")
    if opts.synthetic and not 1 <= opts.digits[0] <= opts.digits[1] <= 5:
        raise ShardError(f"--digits {opts.digits}: expected 1 <= min <= max <= 5")
    if not 0 <= opts.sprites[0] <= opts.sprites[1] <= 8:
        raise ShardError(f"--sprites {opts.sprites}: expected 0 <= min <= max <= 8")
    if opts.synthetic == "moving-digits" and (opts.still or opts.sprites != (0, 0) or opts.noise != 1.0):
        raise ShardError("--still, --sprites and --noise are photo-pans options; moving digits have none of them")
    if not 0 <= opts.noise <= 50:
        raise ShardError(f"--noise {opts.noise}: expected a std in grey levels in [0, 50]")


def load_dataset_yaml(path: str | Path) -> tuple[list[Source], dict]:
    """Sources per split and the clip settings of a YOLO-style dataset.yaml (paths relative to the file)."""
    from ..config import read_yaml_mapping

    path = Path(path)
    spec = read_yaml_mapping(path, ShardError, "--dataset file")
    known = {
        "path",
        "train",
        "val",
        "test",
        "context_frames",
        "future_frames",
        "frame_size",
        "frame_interval",
        "augment",
    }
    unknown = set(spec) - known
    if unknown:
        raise ShardError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    root = path.parent / spec.get("path", ".")
    sources, settings = [], {}
    for split in ("train", "val", "test"):
        if spec.get(split) is None:
            continue
        entries = spec[split] if isinstance(spec[split], list) else [spec[split]]
        found, skipped = discover([root / str(e) for e in entries])
        if skipped:
            raise ShardError(f"{path}: {split}: {skipped[0]['path']}: {skipped[0]['reason']}")
        sources += [Source(s.path, s.kind, split) for s in found]
    if not sources:
        raise ShardError(f"{path}: no train/val/test paths given")
    if "context_frames" in spec or "future_frames" in spec:
        settings["frames"] = int(spec.get("context_frames", 0)) + int(spec.get("future_frames", 0))
    if "frame_size" in spec:
        fs = spec["frame_size"]
        settings["size"] = (int(fs), int(fs)) if isinstance(fs, (int, float)) else tuple(int(v) for v in fs)
    if "frame_interval" in spec:
        settings["interval"] = int(spec["frame_interval"])
    if "augment" in spec:
        settings["augment"] = spec["augment"]
    return sources, settings


@dataclass
class Plan:
    """A run's decided inputs: the sources (each with its split) or none for synthetic data, what was skipped,
    the clip geometry, each source's captions, and the dataset.yaml's augmentation."""

    spec: ClipSpec
    sources: list[Source] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    augment: dict | None = None


def _check_output(out: str, inputs: list[tuple[str, str]], replaceable: bool = True) -> None:
    """--out is new, empty or an earlier `vdp shard` output (its manifest), and apart from every source: replacing
    its splits must never delete a user's videos."""
    from ..fsutil import OutputError, check_no_overlap, check_replaceable

    try:
        if replaceable:
            check_replaceable(out, "manifest.json", "a `vdp shard` output")
        check_no_overlap(out, inputs)
    except OutputError as exc:
        raise ShardError(f"--out: {exc}") from None


def plan(opts: ShardOptions, log) -> Plan:
    """Check the options, find the sources (``log`` says what is skipped), assign splits by source and read the
    captions."""
    check(opts)
    _check_output(opts.out, [("--source", s) for s in opts.sources or []])
    caption_table = None
    if opts.captions:
        if opts.synthetic:
            raise ShardError("--captions: moving digits are captioned from their content; give no caption file")
        try:
            caption_table = load_captions(opts.captions)
        except CaptionError as exc:
            raise ShardError(str(exc)) from None
    if opts.synthetic:
        frames, size = opts.frames or 16, tuple(opts.size or (64, 64))
        return Plan(_clip_spec(opts, frames, size, 1))  # synthetic clips are split by photo / by clip in _run_tasks
    settings: dict = {}
    skipped: list[dict] = []
    if opts.dataset:
        if opts.sources:
            raise ShardError("give either --dataset or --source, not both")
        sources, settings = load_dataset_yaml(opts.dataset)
    else:
        sources, skipped = discover(opts.sources)
        for item in skipped:
            log(f"skipped {item['path']}: {item['reason']}")
        if skipped and opts.strict:
            raise ShardError(f"--strict: {skipped[0]['path']}: {skipped[0]['reason']}")
        if not sources:
            raise ShardError("no video files or frame folders found in " + ", ".join(map(str, opts.sources)))
    _check_output(opts.out, [("the source", s.path) for s in sources], replaceable=False)  # (checked above)
    frames = opts.frames or settings.get("frames") or 16
    size = tuple(opts.size or settings.get("size") or (64, 64))
    spec = _clip_spec(opts, frames, size, opts.interval or settings.get("interval") or 1)
    if not any(s.split for s in sources):
        split_of = assign_splits(len(sources), opts.split, opts.seed)
        sources = [Source(s.path, s.kind, split_of[i]) for i, s in enumerate(sources)]
    captions = [captions_for(s.path, s.kind, caption_table) for s in sources]
    if caption_table is not None:
        missing = [s.path for s, c in zip(sources, captions, strict=True) if not c]
        if missing:
            log(
                f"{len(missing)} of {len(sources)} source(s) have no captions (e.g. {missing[0]}): their clips "
                "train as unconditional (null text)"
            )
    return Plan(spec, sources, skipped, captions, settings.get("augment"))


def _clip_spec(opts: ShardOptions, frames: int, size: tuple, interval: int) -> ClipSpec:
    stride = opts.stride or (frames - 1) * interval + 1
    if opts.format == "mp4" and (size[0] % 2 or size[1] % 2):
        raise ShardError(f"--format mp4 needs an even --size (yuv420p), got {size[0]} {size[1]}")
    return ClipSpec(frames, size, stride, interval, opts.resize, opts.grayscale)


def synthetic_splits(opts: ShardOptions) -> list[str]:
    """The split of every synthetic clip: moving digits by clip; photo pans by photo (clip i films photo
    i mod len(PHOTOS)), so validation shows photos that training never saw."""
    if opts.synthetic == "photo-pans":
        from .photo_pans import PHOTOS

        per_photo = assign_splits(len(PHOTOS), opts.split, opts.seed)
        return [per_photo[i % len(PHOTOS)] for i in range(opts.num_clips)]
    return assign_splits(opts.num_clips, opts.split, opts.seed)


def assign_splits(n: int, split: dict[str, float] | None, seed: int) -> list[str]:
    """Split n sources (or synthetic clips) by a seeded permutation; every named split with a nonzero
    fraction gets at least one item when there are enough items."""
    split = split or {"train": 1.0}
    names = list(split)
    counts = [int(np.floor(split[k] * n)) for k in names]
    for i in np.argsort([-(split[k] * n - counts[j]) for j, k in enumerate(names)]):  # largest remainders first
        if sum(counts) >= n:
            break
        counts[i] += 1
    for i, k in enumerate(names):  # a tiny split still gets one source rather than silently none
        if split[k] > 0 and counts[i] == 0 and n > len(names):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    order = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    pos = 0
    for name, count in zip(names, counts, strict=True):
        for idx in order[pos : pos + count]:
            out[idx] = name
        pos += count
    return out
