"""Ray Data: clip shards -> decoded, augmented uint8 clips (C, T, H, W), streamed to training.

    ds = clip_dataset(cfg.data.train, cfg.data, train=True, seed=cfg.run.seed)
    for epoch, batch in epochs(ds.iterator(), batch_size=8, shuffle_buffer=256):
        clips = to_model_range(batch["clip"].to(device))  # uint8 (B, C, T, H, W) -> float in [-1, 1] there

Clips travel as uint8 through the object store and to the device (4x less than float32) and become floats
where they are used.

Reading is `read_webdataset` over an explicit sorted list of tar paths (it does not expand globs); shards
are shuffled at the file level each epoch and clips in a local buffer by the consumer. Decoding and
augmentation run in one `map_batches` stage: the same random crop and flip for every frame of a clip.
"""

from __future__ import annotations

import glob as globlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..pixels import crop_and_resize, match_channels
from .codec import decode_clip
from .latent_format import KIND as LATENTS
from .latent_format import decode_latents
from .shards import MANIFEST, ShardError

DECODE_BATCH = 16  # clips per map_batches call: large enough to amortise the call, small for memory
PREFETCH = 2  # batches a consumer's iterator prepares ahead of the step that needs them


def _is_uri(path: str) -> bool:
    return "://" in path


def list_shards(spec: str | list[str]) -> list[str]:
    """Sorted tar paths from a split folder (local or a URI Ray's filesystems reach), a glob, a single tar,
    or a comma-separated / Python list of those."""
    items = spec if isinstance(spec, list) else [s for s in str(spec).split(",") if s.strip()]
    paths: list[str] = []
    for item in items:
        item = item.strip()
        if _is_uri(item):
            paths += _list_uri(item)
        elif any(ch in item for ch in "*?["):
            paths += sorted(p for p in globlib.glob(item) if p.endswith(".tar"))
        elif Path(item).is_dir():
            paths += sorted(str(p) for p in Path(item).glob("*.tar"))
        elif Path(item).is_file() and item.endswith(".tar"):
            paths.append(item)
        else:
            raise ShardError(f"{item}: no such shard folder, glob or .tar file")
    if not paths:
        raise ShardError(f"{spec}: no .tar shards found (make them with `vdp shard`)")
    return paths


def _list_uri(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    scheme = uri.split("://", 1)[0]
    return sorted(f"{scheme}://{i.path}" for i in infos if i.path.endswith(".tar"))


def split_folders(paths: list[str]) -> list[Path]:
    """Split folders (holding a manifest.json and shards) under the given shard roots or split folders."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ShardError(f"{path}: no such shard folder")
        top = path / MANIFEST
        manifest = json.loads(top.read_text()) if top.is_file() else {}
        if "splits" in manifest:
            found += [path / s for s in manifest["splits"]]
        elif top.is_file() or any(path.glob("*.tar")):
            found.append(path)
        else:
            raise ShardError(f"{path}: not a folder written by `vdp shard` (no manifest.json or .tar shards)")
    return found


def run_split_folders(data_cfg) -> list[str]:
    """The split folders a run reads (training first, then validation): where their caption tables live."""
    specs = [data_cfg.train, *([data_cfg.val] if data_cfg.val else [])]
    return [str(Path(list_shards(spec)[0]).parent) for spec in specs]


def shard_manifest(spec: str | list[str]) -> dict | None:
    """The manifest.json beside the first shard, if there is one (None for hand-made shards)."""
    first = list_shards(spec)[0]
    parent = first.rsplit("/", 1)[0]
    try:
        if _is_uri(first):
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(f"{parent}/{MANIFEST}")
            with fs.open_input_file(path) as f:
                return json.loads(f.read())
        path = Path(parent) / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, FileNotFoundError):
        return None


def check_shards(spec: str | list[str], data_cfg) -> dict | None:
    """Fail early, before any training starts, when the shards cannot give the clips the config asks for."""
    manifest = shard_manifest(spec)
    if manifest and manifest.get("kind") == LATENTS:
        return manifest  # their geometry is checked against the run's VAE (latent_format.check_latents)
    _check_sizes(spec, manifest)
    if manifest and manifest.get("shape"):
        t = manifest["shape"][0]
        if t < data_cfg.frames:
            raise ShardError(
                f"{spec}: shards hold {t}-frame clips but data.frames is {data_cfg.frames}; "
                f"re-shard with --frames {data_cfg.frames} or lower data.frames"
            )
    return manifest


def _check_sizes(spec, manifest: dict | None) -> None:
    """Each local shard has the size its manifest recorded: a truncated (or replaced) tar is named before training,
    not met as a failed read in the middle of it."""
    recorded = {s["file"]: s.get("bytes") for s in (manifest or {}).get("shards", []) if isinstance(s, dict)}
    for path in list_shards(spec):
        expected = recorded.get(path.rsplit("/", 1)[-1])
        if expected is None or _is_uri(path):
            continue
        actual = Path(path).stat().st_size
        if actual != expected:
            raise ShardError(
                f"{path}: {actual} bytes, its manifest says {expected}: truncated or replaced since "
                "`vdp shard` wrote it; re-run vdp shard (or restore the file)"
            )


def clip_dataset(
    spec: str | list[str], data_cfg, *, train: bool, seed: int = 0, with_meta: bool = False, keep_bad: bool = False
):
    """A Ray Dataset of {"clip": uint8 (C, T, H, W), "key": str, "caption": str} rows (and "meta": each clip's JSON
    text, "" when it has none, with ``with_meta``). A clip that cannot be decoded is left out and named on
    stderr, or (``keep_bad``: for training, which counts them against data.max_bad_fraction) kept as a row with
    its reason in "bad" ("" for the good ones)."""
    import ray
    from ray.data import FileShuffleConfig

    paths = list_shards(spec)
    manifest = check_shards(paths, data_cfg)
    if (manifest or {}).get("kind") == LATENTS:  # `vdp encode` output: posteriors, no decoding or augmentation
        ds = ray.data.read_webdataset(
            paths, decoder=None, suffixes=["npy", "json"], shuffle=FileShuffleConfig(seed=seed) if train else None
        )
        return ds.map_batches(decode_latents, batch_size=DECODE_BATCH, batch_format="numpy")
    augment = (manifest or {}).get("augment") or {}
    hflip = data_cfg.hflip if data_cfg.hflip is not None else bool(augment.get("hflip", augment.get("flip", False)))
    crop_scale = data_cfg.crop_scale if data_cfg.crop_scale is not None else float(augment.get("crop_scale", 1.0))
    ds = ray.data.read_webdataset(
        paths,
        decoder=None,  # raw bytes: decoding happens in the batched stage below
        suffixes=["npy", "mp4", "json"],
        shuffle=FileShuffleConfig(seed=seed) if train else None,
        include_paths=True,  # a clip that cannot be decoded is named by shard and key
    )
    return ds.map_batches(
        decode_batch,
        batch_size=DECODE_BATCH,
        batch_format="numpy",
        fn_kwargs={
            "frames": data_cfg.frames,
            "size": tuple(data_cfg.size),
            "channels": data_cfg.channels,
            "train": train,
            "hflip": hflip if train else False,
            "crop_scale": crop_scale if train else 1.0,
            "more": {k: getattr(data_cfg, k) and train for k in ("vflip", "reverse", "channel_shuffle")},
            "with_meta": with_meta,
            "keep_bad": keep_bad,
        },
    )


def _augment(x, more: dict, rng):
    """Vertical flip, time reversal and a colour-channel permutation of one (C, T, H, W) clip, each where switched
    on and drawn (flips and reversal at 1/2)."""
    if more.get("vflip") and rng.uniform() < 0.5:
        x = x.flip(-2)
    if more.get("reverse") and rng.uniform() < 0.5:
        x = x.flip(1)
    if more.get("channel_shuffle") and x.shape[0] > 1:
        x = x[rng.permutation(x.shape[0])]
    return x


def decode_batch(
    batch: dict,
    *,
    frames: int,
    size,
    channels: int,
    train: bool,
    hflip: bool,
    crop_scale: float,
    more: dict | None = None,
    with_meta: bool = False,
    keep_bad: bool = False,
) -> dict:
    """Decode, cut to T frames, match channels and size, augment; (B, C, T, H, W) uint8 (a resize rounds to the
    nearest level, as any stored frame is). ``more``: the other augmentations switched on (vflip, reverse,
    channel_shuffle), each drawn per clip."""
    import torch

    rng = np.random.default_rng() if train else None
    keys = batch["__key__"]
    clips, captions, bad = [], [], []
    for i in range(len(keys)):
        try:
            clip = _one_clip(batch, i, channels, frames)
        except Exception as exc:  # a bad member: skipped (and named) by `epochs`, not a failed Ray Data task
            clips.append(torch.zeros((channels, frames, *size), dtype=torch.uint8))
            captions.append("")
            where = Path(str(batch["path"][i])).name if "path" in batch else "?"
            bad.append(f"{keys[i]} in {where}: {str(exc)[:200] or type(exc).__name__}")
            continue
        bad.append("")
        offset = int(rng.integers(0, clip.shape[0] - frames + 1)) if train else 0
        x = torch.from_numpy(np.ascontiguousarray(clip[offset : offset + frames]))
        x = x.permute(3, 0, 1, 2).float()  # (C, T, H, W) pixel values
        x = crop_and_resize(match_channels(x, channels, dim=0), size, crop_scale, rng)
        if hflip and rng.uniform() < 0.5:
            x = x.flip(-1)
        x = _augment(x, more or {}, rng)
        clips.append(x.round().clamp(0, 255).to(torch.uint8))
        captions.append(_pick_caption(batch.get("json"), i, rng))
    out = {
        "clip": torch.stack(clips).numpy(),
        "key": np.asarray(keys),
        "caption": np.asarray(captions, dtype=object),
        "bad": np.asarray(bad, dtype=object),
    }
    if with_meta:
        metas = batch.get("json")
        out["meta"] = np.asarray([_text(metas[i]) if metas is not None else "" for i in range(len(keys))], dtype=object)
    if keep_bad or not any(bad):
        return out
    import sys

    for reason in filter(None, bad):
        print(f"[vdp data] skipped clip {reason}", file=sys.stderr, flush=True)
    ok = out.pop("bad") == ""
    return {k: v[ok] for k, v in out.items()}


def _one_clip(batch: dict, i: int, channels: int, frames: int) -> np.ndarray:
    """Sample i's clip, (T, H, W, C) uint8, at least ``frames`` long; raises on anything else."""
    for fmt in ("npy", "mp4"):
        if fmt in batch and batch[fmt][i] is not None:
            clip = decode_clip(batch[fmt][i], fmt, channels)
            break
    else:
        raise ShardError("no .npy or .mp4 member")
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] not in (1, 3):
        raise ShardError(f"not a uint8 (T, H, W, 1|3) clip: {clip.dtype} {clip.shape}")
    if clip.shape[0] < frames:
        raise ShardError(f"{clip.shape[0]} frames, data.frames is {frames}")
    return clip


class BadClips:
    """Clips met in training that cannot be decoded (or are too short): skipped as they come, counted, each named
    through ``report(text)``; ``too_many()`` once they pass ``max_fraction`` of the clips seen (and a few)."""

    FLOOR = 4  # clips that may be bad before the fraction applies: bad ones met first do not stop a run

    def __init__(self, max_fraction: float, report=None):
        self.max_fraction, self.report = max_fraction, report
        self.seen = self.bad = 0
        self.last = ""

    def note(self, reasons) -> np.ndarray:
        """The batch's good rows (a boolean mask); the bad ones counted and reported."""
        ok = np.asarray([not r for r in reasons], dtype=bool)
        self.seen += len(ok)
        for reason in (r for r in reasons if r):
            self.bad += 1
            self.last = reason
            if self.report is not None:
                self.report(f"skipped clip {reason} ({self.bad} of {self.seen} so far)")
        return ok

    def too_many(self) -> bool:
        return self.bad > max(self.FLOOR, self.max_fraction * self.seen)

    def message(self) -> str:
        return (
            f"{self.bad} of {self.seen} clips could not be read (over data.max_bad_fraction "
            f"{self.max_fraction:g}; the last: {self.last}): check the shards (re-run vdp shard)"
        )


def _with_good_rows(ok: np.ndarray) -> np.ndarray:
    """Row indices of a batch whose bad rows (``ok`` False) are replaced by its good ones in turn: same size."""
    good = np.flatnonzero(ok)
    rows = np.arange(len(ok))
    rows[~ok] = good[np.arange((~ok).sum()) % len(good)]
    return rows


def _text(raw) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw if isinstance(raw, str) else json.dumps(raw)


def _pick_caption(metas, i: int, rng) -> str:
    """One of the clip's captions: a random one in training, the first otherwise; "" (null text) when none."""
    if metas is None or metas[i] is None:
        return ""
    raw = metas[i]
    meta = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    captions = meta.get("captions") or []
    if not captions:
        return ""
    return str(captions[int(rng.integers(len(captions)))] if rng is not None else captions[0])


def epochs(
    iterator,
    *,
    batch_size: int,
    shuffle_buffer: int = 0,
    drop_last: bool = True,
    max_epochs: int | None = None,
    start_epoch: int = 0,
    pin_memory: bool = False,
    prefetch: int = PREFETCH,
    bad: BadClips | None = None,
) -> Iterator[tuple[int, dict]]:
    """Endless (epoch, batch) pairs from a Ray DataIterator (or dataset shard), reshuffled each epoch.

    A batch is {"clip": torch uint8 (B, C, T, H, W) on the CPU (in pinned memory with ``pin_memory``, for an
    asynchronous copy to a GPU), "key": list of str, "caption": list of str ("" where a clip has none), "weight":
    1.0, or 0.0 for a batch that holds no readable clip}; the caller moves the clips to its device and makes them
    floats there. ``prefetch`` batches are prepared ahead.

    Clips that could not be decoded are noted (named and counted) in ``bad`` and never remove a batch: every rank
    must take one batch per step whatever its data, or a rank that ends its epoch early waits forever for the
    others (in Ray Data's split coordinator) while they wait for it (in the step's collectives). A bad clip is
    replaced by a readable one of its batch; a batch with none is yielded as it is (zeros) with weight 0, which
    the loop multiplies its loss by.
    """
    import torch

    skips = bad if bad is not None else BadClips(1.0)  # (1.0: counted, never too many)
    epoch = start_epoch
    while max_epochs is None or epoch < max_epochs:
        seen = 0
        for batch in iterator.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=shuffle_buffer or None,
            drop_last=drop_last,
            prefetch_batches=prefetch,
        ):
            name = "latent" if "latent" in batch else "clip"  # latent shards: fp16 posteriors (B, 2, C, t, h, w)
            weight = 1.0
            if "bad" in batch:
                ok = skips.note(batch.pop("bad"))
                if ok.any() and not ok.all():
                    batch = {k: v[_with_good_rows(ok)] for k, v in batch.items()}
                weight = float(ok.any())
            seen += 1
            clips = torch.from_numpy(np.require(batch[name], requirements="W"))  # Ray hands out read-only arrays
            if pin_memory:
                clips = clips.pin_memory()
            captions = [str(c) for c in batch["caption"]] if "caption" in batch else [""] * len(clips)
            keys = [str(k) for k in batch["key"]]
            yield epoch, {name: clips, "key": keys, "caption": captions, "weight": weight}
        if seen == 0:
            raise ShardError(f"the dataset gave no batch of {batch_size} clips in a whole epoch: too few clips")
        epoch += 1
