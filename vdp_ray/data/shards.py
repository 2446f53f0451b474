"""`vdp shard`: sources -> WebDataset tar shards of clips, one clip per sample, with a manifest per split.
What to shard is decided first, on the driver (``shard_plan.py``); then the work runs on Ray.

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
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write, swap_in
from ..version import __version__
from .codec import encode_clip
from .shard_plan import Plan, ShardError, ShardOptions, load_dataset_yaml, parse_split, plan, synthetic_splits
from .sources import ClipSpec, Source, SourceError, source_clips

MANIFEST = "manifest.json"
SYNTHETIC_CHUNK = 64  # clips per Ray task when generating


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
    report = {
        "index": index,
        "path": source.path,
        "part": part,
        "split": source.split,
        "keys": [],
        "fps": None,
        "frames_read": 0,
    }
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


def _synthetic_clip(i: int, opts: ShardOptions) -> tuple[np.ndarray, dict]:
    """Clip i of the synthetic data set and what is in it (captions for moving digits)."""
    if opts.synthetic == "photo-pans":
        from .photo_pans import PHOTOS, photo_pan_clip

        photo = PHOTOS[i % len(PHOTOS)][0]
        return photo_pan_clip(
            i,
            opts.seed,
            photo,
            opts.frames,
            opts.size,
            still=opts.still,
            sprites=opts.sprites,
            channels=1 if opts.grayscale else 3,
            noise=opts.noise,
        )
    from .captions import describe_digits
    from .moving_digits import moving_digits_clip

    clip, info = moving_digits_clip(i, opts.seed, opts.frames, opts.size, opts.digits, opts.stochastic)
    return clip, {"captions": describe_digits(info["digits"], info["velocity_yx"]), **info}


def _shard_synthetic(first: int, count: int, split_of: list[str], opts: ShardOptions, part: str) -> dict:
    name = opts.synthetic
    report = {"index": first, "path": f"{name}[{first}:{first + count}]", "part": part, "keys": [], "splits": []}
    tmp = part + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        for i in range(first, first + count):
            clip, info = _synthetic_clip(i, opts)
            key = f"{i:08d}_{name}"
            meta = {
                "source": name,
                "index": i,
                "seed": opts.seed,
                "fps": 10.0,
                "start": 0,
                "interval": 1,
                "frames": opts.frames,
                "size": list(opts.size),
                "channels": clip.shape[-1],
                "split": split_of[i],
                **info,
            }
            _write_sample(tar, key, encode_clip(clip, opts.format, 10.0), opts.format, meta)
            report["keys"].append(key)
            report["splits"].append(split_of[i])
    os.replace(tmp, part)
    return report


def photos_of(split: str, opts: ShardOptions) -> list[str]:
    from .photo_pans import PHOTOS

    split_of = synthetic_splits(replace(opts, num_clips=len(PHOTOS)))
    return [name for (name, _), s in zip(PHOTOS, split_of, strict=True) if s == split]


# ------------------------------------------------------------------------------------------ driver
def shard(opts: ShardOptions, log=print) -> dict:
    """Run `vdp shard`. Returns the top-level manifest (also written to OUT/manifest.json)."""
    import time

    from ..raytools import init_ray

    started = time.monotonic()
    pl = plan(opts, log)  # every check before any Ray work
    out = Path(opts.out)
    parts = out / ".parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    init_ray()
    try:
        reports = _run_tasks(opts, pl, parts, log)
    except ShardError:
        shutil.rmtree(parts, ignore_errors=True)
        raise
    per_split = _split_members(reports, opts.synthetic is not None)
    summary = {"splits": {}, "skipped": pl.skipped, "options": asdict(opts), "created_by": _created_by()}
    for split, members in per_split.items():
        if not members:
            continue
        manifest = _write_split(out / split, members, opts, pl.spec, reports, pl.skipped, pl.augment, split)
        summary["splits"][split] = {"count": manifest["count"], "shards": len(manifest["shards"])}
    shutil.rmtree(parts, ignore_errors=True)
    if not summary["splits"]:
        raise ShardError("no clips were written: every source was skipped (see the reasons above)")
    atomic_write(out / MANIFEST, json.dumps(summary, indent=2))
    summary["elapsed_s"] = round(time.monotonic() - started, 2)
    return summary


def _run_tasks(opts: ShardOptions, pl: Plan, parts: Path, log) -> list[dict]:
    """Phase 1: one Ray task per source (or chunk of synthetic clips) writes a part tar; their reports, in source
    order. A source that fails is added to ``pl.skipped`` (or, with --strict, stops the run)."""
    import ray

    from ..progress import Progress

    if opts.synthetic:
        split_of = synthetic_splits(opts)
        task = ray.remote(num_cpus=1)(_shard_synthetic)
        sized = ShardOptions(**{**asdict(opts), "frames": pl.spec.frames, "size": pl.spec.size})
        refs = [
            task.remote(
                first, min(SYNTHETIC_CHUNK, opts.num_clips - first), split_of, sized, str(parts / f"{first:08d}.tar")
            )
            for first in range(0, opts.num_clips, SYNTHETIC_CHUNK)
        ]
        what, total = "clips", opts.num_clips
    else:
        task = ray.remote(num_cpus=1)(_shard_source)
        refs = [
            task.remote(i, s, pl.spec, opts.format, str(parts / f"{i:06d}.tar"), pl.captions[i])
            for i, s in enumerate(pl.sources)
        ]
        what, total = "sources", len(pl.sources)
    progress = Progress(total, f"shard {what}")
    reports, pending, clips = [], list(refs), 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        report = ray.get(ready[0])
        reports.append(report)
        clips += len(report["keys"])
        if report.get("error"):
            item = {"path": report["path"], "reason": report["error"], "split": report.get("split")}
            pl.skipped.append(item)
            log(f"skipped {item['path']}: {item['reason']}")
            if opts.strict:
                for ref in pending:
                    ray.cancel(ref)
                raise ShardError(f"--strict: {item['path']}: {item['reason']}")
        progress.update(len(report["keys"]) if opts.synthetic else 1, f"{clips} clips, {len(pl.skipped)} skipped")
    return sorted(reports, key=lambda r: r["index"])


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
        what = (
            {"digits": list(opts.digits), "stochastic": opts.stochastic}
            if opts.synthetic == "moving-digits"
            else {
                "photos": photos_of(split, opts),
                "still": opts.still,
                "sprites": list(opts.sprites),
                "noise": opts.noise,
            }
        )
        sources = [{"path": opts.synthetic, "clips": len(members), "seed": opts.seed, **what}]
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
    swap_in(staging, directory, MANIFEST)
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


__all__ = ["MANIFEST", "ShardError", "ShardOptions", "load_dataset_yaml", "parse_split", "read_manifest", "shard"]
