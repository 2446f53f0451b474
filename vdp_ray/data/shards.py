"""`vdp shard`: sources -> WebDataset tar shards of clips, one clip per sample, with a manifest per split.

Work is split in two phases so memory stays flat and the output is the same for the same input and seed:

1. one Ray task per source (or per chunk of synthetic clips) streams its clips into a *part* tar;
2. the driver shuffles all clip keys of a split with the seed and copies them into fixed-size shards.

Every file is written under a temporary name and renamed when complete; the manifest comes last.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write, swap_in
from .captions import CaptionError, captions_for, load_captions
from .codec import FORMATS, encode_clip
from .sources import RESIZE_MODES, ClipSpec, Source, SourceError, discover, source_clips

MANIFEST = "manifest.json"
SYNTHETIC = ("moving-digits",)
SYNTHETIC_CHUNK = 64  # clips per Ray task when generating


class ShardError(Exception):
    """Bad options or a failed run; the message names the flag or file."""


@dataclass
class ShardOptions:
    out: str
    sources: list[str] = field(default_factory=list)
    frames: int | None = None  # default 16, or context_frames + future_frames of a dataset.yaml
    size: tuple[int, int] | None = None  # default (64, 64), or the dataset.yaml's frame_size
    stride: int | None = None  # default: one clip span (no overlap)
    interval: int | None = None  # default 1, or the dataset.yaml's frame_interval
    split: dict[str, float] | None = None
    dataset: str | None = None
    shard_size: int = 256
    resize: str = "crop"
    grayscale: bool = False
    seed: int = 0
    strict: bool = False
    format: str = "npy"
    synthetic: str | None = None
    num_clips: int = 1000
    digits: tuple[int, int] = (1, 3)
    stochastic: bool = False
    captions: str | None = None  # a CSV / JSON / MSR-VTT caption file; sidecar .txt files are always read


# ------------------------------------------------------------------------------------------ options
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


def _check(opts: ShardOptions) -> None:
    if opts.frames is not None and opts.frames < 1:
        raise ShardError(f"--frames must be >= 1, got {opts.frames}")
    if opts.size is not None and (len(opts.size) != 2 or min(opts.size) < 2):
        raise ShardError(f"--size needs two values >= 2 (height width), got {opts.size}")
    for flag, value in (("--stride", opts.stride), ("--interval", opts.interval), ("--shard-size", opts.shard_size)):
        if value is not None and value < 1:
            raise ShardError(f"{flag} must be >= 1, got {value}")
    if opts.resize not in RESIZE_MODES:
        raise ShardError(f"--resize {opts.resize!r}: expected one of {RESIZE_MODES}")
    if opts.format not in FORMATS:
        raise ShardError(f"--format {opts.format!r}: expected one of {FORMATS}")
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


# ------------------------------------------------------------------------------------------ tar helpers
def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # fixed metadata: same input, same bytes
    tar.addfile(info, io.BytesIO(payload))


def _write_sample(tar: tarfile.TarFile, key: str, payload: bytes, fmt: str, meta: dict) -> None:
    _add_member(tar, f"{key}.{fmt}", payload)
    _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())


def _key(index: int, stem: str, start: int) -> str:
    # WebDataset splits a member name at its first dot: keys carry none.
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", stem)[:40].strip("-") or "clip"
    return f"{index:06d}_{clean}_{start:06d}"


# ------------------------------------------------------------------------------------------ ray tasks
def _shard_source(index: int, source: Source, spec: ClipSpec, fmt: str, part: str, captions: list[str]) -> dict:
    """Stream every clip of one source into a part tar. Returns a report; failures are reported, not raised."""
    report = {"index": index, "path": source.path, "part": part, "split": source.split, "keys": [], "fps": None,
              "frames_read": 0}  # fmt: skip
    tmp = part + ".tmp"
    try:
        clips, fps, counter = source_clips(source, spec)
        report["fps"] = fps
        with tarfile.open(tmp, "w") as tar:
            for start, clip in clips:
                key = _key(index, Path(source.path).stem, start)
                meta = {
                    **{"source": source.path, "kind": source.kind, "fps": fps, "start": start, "split": source.split},
                    **{"interval": spec.interval, "stride": spec.stride, "frames": spec.frames, "resize": spec.resize},
                    **{"size": list(spec.size), "channels": clip.shape[-1]},
                    **({"captions": captions} if captions else {}),
                }
                _write_sample(tar, key, encode_clip(clip, fmt, fps), fmt, meta)
                report["keys"].append(key)
        report["frames_read"] = counter[0]
        if not report["keys"]:
            raise SourceError(
                f"too short: {counter[0]} frames, one clip needs {spec.span} "
                f"({spec.frames} frames at interval {spec.interval})"
            )
        os.replace(tmp, part)
    except (SourceError, ValueError, OSError) as exc:
        report["error"] = str(exc)
        report["keys"] = []
        Path(tmp).unlink(missing_ok=True)
    return report


def _shard_synthetic(first: int, count: int, split_of: list[str], opts: ShardOptions, part: str) -> dict:
    from .captions import describe_digits
    from .moving_digits import moving_digits_clip

    report = {"index": first, "path": f"moving-digits[{first}:{first + count}]", "part": part, "keys": [],
              "splits": []}  # fmt: skip
    tmp = part + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        for i in range(first, first + count):
            clip, info = moving_digits_clip(i, opts.seed, opts.frames, opts.size, opts.digits, opts.stochastic)
            key = f"{i:08d}_moving-digits"
            meta = {"source": "moving-digits", "index": i, "seed": opts.seed, "fps": 10.0, "start": 0, "interval": 1,
                    "frames": opts.frames, "size": list(opts.size), "channels": clip.shape[-1], "split": split_of[i],
                    "captions": describe_digits(info["digits"], info["velocity_yx"]), **info}  # fmt: skip
            _write_sample(tar, key, encode_clip(clip, opts.format, 10.0), opts.format, meta)
            report["keys"].append(key)
            report["splits"].append(split_of[i])
    os.replace(tmp, part)
    return report


# ------------------------------------------------------------------------------------------ driver
def shard(opts: ShardOptions, log=print) -> dict:
    """Run `vdp shard`. Returns the top-level manifest (also written to OUT/manifest.json)."""
    import time

    import ray

    from ..progress import Progress
    from ..raytools import init_ray

    _check(opts)
    caption_table = None
    if opts.captions:
        if opts.synthetic:
            raise ShardError("--captions: moving digits are captioned from their content; give no caption file")
        try:
            caption_table = load_captions(opts.captions)
        except CaptionError as exc:
            raise ShardError(str(exc)) from None
    started = time.monotonic()
    settings: dict = {}
    skipped: list[dict] = []
    sources: list[Source] = []
    if opts.synthetic:
        frames, size, interval = opts.frames or 16, tuple(opts.size or (64, 64)), 1
    else:
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
        frames = opts.frames or settings.get("frames") or 16
        size = tuple(opts.size or settings.get("size") or (64, 64))
        interval = opts.interval or settings.get("interval") or 1
    stride = opts.stride or (frames - 1) * interval + 1
    spec = ClipSpec(frames, size, stride, interval, opts.resize, opts.grayscale)
    if opts.format == "mp4" and (size[0] % 2 or size[1] % 2):
        raise ShardError(f"--format mp4 needs an even --size (yuv420p), got {size[0]} {size[1]}")

    out = Path(opts.out)
    parts = out / ".parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    init_ray()
    if opts.synthetic:
        split_of = _assign_splits(opts.num_clips, opts.split, opts.seed)
        task = ray.remote(num_cpus=1)(_shard_synthetic)
        opts_sized = ShardOptions(**{**asdict(opts), "frames": frames, "size": size})
        refs = [
            task.remote(first, min(SYNTHETIC_CHUNK, opts.num_clips - first), split_of, opts_sized,
                        str(parts / f"{first:08d}.tar"))
            for first in range(0, opts.num_clips, SYNTHETIC_CHUNK)
        ]  # fmt: skip
        what, total_units = "clips", opts.num_clips
    else:
        if not any(s.split for s in sources):
            split_of = _assign_splits(len(sources), opts.split, opts.seed)
            sources = [Source(s.path, s.kind, split_of[i]) for i, s in enumerate(sources)]
        caption_lists = [captions_for(s.path, s.kind, caption_table) for s in sources]
        if caption_table is not None:
            missing = [s.path for s, c in zip(sources, caption_lists, strict=True) if not c]
            if missing:
                log(f"{len(missing)} of {len(sources)} source(s) have no captions (e.g. {missing[0]}): their clips "
                    "train as unconditional (null text)")  # fmt: skip
        task = ray.remote(num_cpus=1)(_shard_source)
        refs = [task.remote(i, s, spec, opts.format, str(parts / f"{i:06d}.tar"), caption_lists[i])
                for i, s in enumerate(sources)]  # fmt: skip
        what, total_units = "sources", len(sources)

    progress = Progress(total_units, f"shard {what}")
    reports, pending, clips = [], list(refs), 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        report = ray.get(ready[0])
        reports.append(report)
        clips += len(report["keys"])
        if report.get("error"):
            item = {"path": report["path"], "reason": report["error"], "split": report.get("split")}
            skipped.append(item)
            log(f"skipped {item['path']}: {item['reason']}")
            if opts.strict:
                for ref in pending:
                    ray.cancel(ref)
                shutil.rmtree(parts, ignore_errors=True)
                raise ShardError(f"--strict: {item['path']}: {item['reason']}")
        progress.update(len(report["keys"]) if opts.synthetic else 1, f"{clips} clips, {len(skipped)} skipped")
    reports.sort(key=lambda r: r["index"])

    augment = settings.get("augment")
    per_split = _split_members(reports, opts.synthetic is not None)
    summary = {"splits": {}, "skipped": skipped, "options": asdict(opts), "created_by": _created_by()}
    for split, members in per_split.items():
        if not members:
            continue
        manifest = _write_split(out / split, members, opts, spec, reports, skipped, augment, split)
        summary["splits"][split] = {"count": manifest["count"], "shards": len(manifest["shards"])}
    shutil.rmtree(parts, ignore_errors=True)
    if not summary["splits"]:
        raise ShardError("no clips were written: every source was skipped (see the reasons above)")
    atomic_write(out / MANIFEST, json.dumps(summary, indent=2))
    summary["elapsed_s"] = round(time.monotonic() - started, 2)
    return summary


def _assign_splits(n: int, split: dict[str, float] | None, seed: int) -> list[str]:
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


def _split_members(reports: list[dict], synthetic: bool) -> dict[str, list[tuple[str, str]]]:
    """split -> [(key, part file)] in a deterministic order."""
    per_split: dict[str, list[tuple[str, str]]] = {}
    for r in reports:
        splits = r["splits"] if synthetic else [r["split"]] * len(r["keys"])
        for key, split in zip(r["keys"], splits, strict=True):
            per_split.setdefault(split, []).append((key, r["part"]))
    return per_split


def _write_split(directory: Path, members, opts, spec, reports, skipped, augment, split) -> dict:
    """Shuffle the split's clips with the seed and copy them into shards; swap the folder in when done."""
    rng = np.random.default_rng([opts.seed, _stable_int(split)])
    order = rng.permutation(len(members))
    staging = directory.with_name(f".{directory.name}.writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    index = _PartIndex()
    shards, shape, captioned = [], None, 0
    for n, first in enumerate(range(0, len(order), opts.shard_size)):
        name = f"shard-{n:06d}.tar"
        count = 0
        with tarfile.open(staging / (name + ".tmp"), "w") as tar:
            for i in order[first : first + opts.shard_size]:
                key, part = members[i]
                for member_name, payload in index.read(part, key):
                    _add_member(tar, member_name, payload)
                    if member_name.endswith(".json"):
                        meta = json.loads(payload)
                        shape = shape or [meta["frames"], *meta["size"], meta["channels"]]
                        captioned += bool(meta.get("captions"))
                count += 1
        os.replace(staging / (name + ".tmp"), staging / name)
        shards.append({"file": name, "count": count, "bytes": (staging / name).stat().st_size})
    if opts.synthetic:
        sources = [{"path": opts.synthetic, "clips": len(members), "seed": opts.seed, "digits": list(opts.digits),
                    "stochastic": opts.stochastic}]  # fmt: skip
    else:
        sources = [
            {"path": r["path"], "clips": len(r["keys"]), "fps": r.get("fps"), "frames_read": r.get("frames_read")}
            for r in reports
            if not r.get("error") and r["split"] == split
        ]
    manifest = {
        "split": split,
        "count": len(members),
        "captioned": captioned,  # clips carrying captions (training draws one per step)
        "shape": shape,  # (T, H, W, C) of every clip
        "format": opts.format,
        "frames": spec.frames,
        "size": list(spec.size),
        "interval": spec.interval,
        "stride": spec.stride,
        "resize": spec.resize,
        "seed": opts.seed,
        "augment": augment,
        "shards": shards,
        "sources": sources,
        "skipped": [s for s in skipped if s.get("split") in (split, None)],
        "created_by": _created_by(),
    }
    atomic_write(staging / MANIFEST, json.dumps(manifest, indent=2))
    swap_in(staging, directory)
    return manifest


class _PartIndex:
    """Random access to the members of part tars by sample key (tar offsets, read on demand)."""

    def __init__(self):
        self._index: dict[str, dict[str, list[tuple[str, int, int]]]] = {}

    def read(self, part: str, key: str) -> list[tuple[str, bytes]]:
        if part not in self._index:
            table: dict[str, list[tuple[str, int, int]]] = {}
            with tarfile.open(part) as tar:
                for m in tar.getmembers():
                    table.setdefault(m.name.split(".", 1)[0], []).append((m.name, m.offset_data, m.size))
            self._index[part] = table
        out = []
        with open(part, "rb") as f:
            for name, offset, size in self._index[part][key]:
                f.seek(offset)
                out.append((name, f.read(size)))
        return out


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _created_by() -> str:
    from .. import __version__

    return f"vdp_ray {__version__}"


def read_manifest(directory: str | Path) -> dict:
    """The manifest of one split folder, checked against the shard files it lists."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ShardError(f"{directory}: no {MANIFEST} (not a folder written by `vdp shard`)")
    manifest = json.loads(path.read_text())
    missing = [s["file"] for s in manifest["shards"] if not (directory / s["file"]).is_file()]
    if missing:
        raise ShardError(f"{directory}: shard(s) listed in {MANIFEST} are missing: {missing[:3]}")
    return manifest
