"""`vdp encode`: clip shards -> latent shards, the frozen VAE's posterior of every clip computed once.

The DiT stage otherwise runs the VAE's encoder on every batch of every step. Here one Ray Data job reads the
clip shards, decodes them in CPU tasks and runs the encoder in an actor pool (a GPU per actor where the cluster
has GPUs, CPUs otherwise), and the driver writes WebDataset shards of the posterior: per clip ``{key}.npy``, an
fp16 array (2, C, t, h, w) holding the mean and the standard deviation (a fresh latent is drawn from them at
every use, as the encoder would), and ``{key}.json`` with its caption. Each split's manifest.json records
``kind: latents``, the VAE export and the digest of its weights, the clip geometry and the latent shape; the
DiT stage trains from such shards directly and refuses ones made by another VAE (the format: latent_format.py).

Clips are encoded as validation reads them (the first data.frames frames, centre crop, no flip): augmentation is
fixed at encoding time. Caption tables (``text/``) of a split are copied along.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..options import REQUIRED, OptionError, arg
from .latent_format import KIND, LATENT, holds_latents, vae_id
from .shards import MANIFEST, ShardError, _add_member


@dataclass
class EncodeOptions:
    shards: str = arg(REQUIRED, "clip shards: a `vdp shard` output folder or one of its splits", positional=True)
    vae: str = arg(REQUIRED, "the VAE export to encode with (e.g. runs/x/vae_export)")
    out: str = arg(REQUIRED, "output folder for the latent shards (replaced only if it holds latent shards)")
    batch_size: int = arg(16, "clips per encoder call")
    workers: int = arg(1, "encoder actors")
    device: str = arg("auto", "auto (a GPU per actor when the Ray cluster has GPUs), cpu, cuda")
    shard_clips: int = arg(256, "clips per latent shard")

    def check(self) -> None:
        for name in ("batch_size", "workers", "shard_clips"):
            if getattr(self, name) < 1:
                raise OptionError(name, "must be at least 1")


class _Encoder:
    """Ray Data actor: the VAE export's encoder on this actor's device; uint8 clips in, fp16 posteriors out."""

    def __init__(self, vae: str, device: str, threads: int = 1):
        import torch

        from ..export import Export

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = torch.device(device)
        self.vae = Export(vae).model().to(self.device).requires_grad_(False)

    def __call__(self, batch: dict) -> dict:
        import torch

        from ..pixels import to_model_range

        with torch.no_grad():
            q = self.vae.encode(to_model_range(torch.from_numpy(np.asarray(batch["clip"])).to(self.device)))
            posterior = torch.stack([q.mean.float(), q.std.float()], dim=1).half().cpu().numpy()
        return {"latent": posterior, "key": np.asarray(batch["key"]), "caption": np.asarray(batch["caption"])}


def encode_latents(opts: EncodeOptions, log=print) -> dict:
    """Encode every split under ``opts.shards`` into ``opts.out`` (one folder per split); returns a summary."""
    from ..export import Export
    from ..fsutil import atomic_write, swap_in
    from ..raytools import PlacementError, cluster_has_gpus, gpu_placement, init_ray
    from .pipeline import split_folders

    opts.check()
    try:
        vae = Export(opts.vae)
    except FileNotFoundError as exc:
        raise OptionError("vae", str(exc)) from None
    if vae.stage != "vae":
        raise OptionError("vae", f"{opts.vae} is a {vae.stage} export; encoding needs a VAE export")
    out = Path(opts.out)
    _check_target(out, [Path(p) for p in [opts.shards]])
    folders = split_folders([opts.shards])
    for folder in folders:
        if holds_latents(folder):
            raise OptionError("shards", f"{folder} holds latent shards already; give the clip shards")
    init_ray()
    try:
        device, gpus = gpu_placement(opts.device, None, cluster_has_gpus)
    except PlacementError as exc:
        raise OptionError("device", str(exc)) from None
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    summary = {
        "kind": KIND,
        "vae_export": str(Path(opts.vae).resolve()),
        "vae_id": vae_id(opts.vae),
        "device": device,
        "splits": {},
    }
    for folder in folders:
        name = folder.name  # train, val: as `vdp shard` names its splits
        started = time.perf_counter()
        manifest = _encode_split(folder, staging / name, vae, opts, device, gpus, summary)
        summary["splits"][name] = {"clips": manifest["count"], "seconds": round(time.perf_counter() - started, 2)}
        rate = manifest["count"] / (time.perf_counter() - started)
        log(f"{folder}: {manifest['count']} clips -> {out / name} ({rate:.1f} clips/s on {device})")
    atomic_write(staging / MANIFEST, json.dumps({**summary, "splits": list(summary["splits"])}, indent=2))
    swap_in(staging, out, MANIFEST)
    return summary


def _check_target(out: Path, sources: list[Path]) -> None:
    """Replace ``out`` only if it holds latent shards (our manifest), never a folder of anything else or one
    that overlaps the clip shards read."""
    from ..fsutil import OutputError, check_no_overlap

    try:
        check_no_overlap(out, [("the clip shards", s) for s in sources])
    except OutputError as exc:
        raise OptionError("out", str(exc)) from None
    if out.exists() and not holds_latents(out) and (not out.is_dir() or any(out.iterdir())):
        raise OptionError("out", f"{out} exists and does not hold latent shards: not replacing it")


def _encode_split(folder: Path, target: Path, vae, opts: EncodeOptions, device: str, gpus: float, summary) -> dict:
    import ray.data

    from .pipeline import clip_dataset

    data = vae.cfg.data
    ds = clip_dataset(str(folder), data, train=False)
    ds = ds.map_batches(
        _Encoder,
        fn_constructor_kwargs={"vae": str(vae.directory), "device": device},
        batch_size=opts.batch_size,
        batch_format="numpy",
        concurrency=opts.workers,
        num_gpus=gpus,
        num_cpus=0 if gpus else 1,
    )
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # same input, same shards
    target.mkdir(parents=True)
    names, count, shape, tar = [], 0, None, None
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for key, latent, caption in zip(batch["key"], batch["latent"], batch["caption"], strict=True):
                if count % opts.shard_clips == 0:
                    if tar is not None:
                        tar.close()
                    names.append(f"latents-{len(names):06d}.tar")
                    tar = tarfile.open(target / names[-1], "w")  # noqa: SIM115 (closed when full or at the end)
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(latent, dtype=np.float16))
                _add_member(tar, f"{key}.{LATENT}", buffer.getvalue())
                _add_member(tar, f"{key}.json", json.dumps({"caption": str(caption)}).encode())
                count, shape = count + 1, list(latent.shape[1:])
    finally:
        if tar is not None:
            tar.close()
    if count == 0:
        raise ShardError(f"{folder}: no clips of {data.frames} frames to encode")
    if (folder / "text").is_dir():  # the caption tables the text-conditioned DiT reads, beside its shards
        shutil.copytree(folder / "text", target / "text")
    manifest = {
        "kind": KIND,
        "vae_export": summary["vae_export"],
        "vae_id": summary["vae_id"],
        "scale_factor": vae.cfg.vae.scale_factor,
        "frames": data.frames,
        "size": list(data.size),
        "channels": data.channels,
        "latent_shape": shape,
        "dtype": "float16",
        "count": count,
        "shards": names,
        "source": str(folder.resolve()),
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
