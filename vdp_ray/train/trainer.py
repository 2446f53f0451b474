"""The driver side: a Ray Train TorchTrainer per stage, run one after another, then an export.

    from vdp_ray.config import load_config
    from vdp_ray.train import fit
    fit(load_config("experiments/tiny_unet.yaml", ["train.workers=2"]))

Without RAY_ADDRESS this starts an embedded local Ray; with it (or inside `ray job submit`) it joins that
cluster. Re-running the same config (same run.dir) resumes each unfinished stage from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

from ..config import Config, ConfigError
from .checkpoint import export_checkpoint
from .faults import HEALTH_CHECK_ENV, HEALTH_CHECK_S, Drill
from .loop import train_loop_per_worker
from .runlog import STATUS
from .selection import selected_weights

ELASTIC_START_TIMEOUT_S = 30.0
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train passes it from the driver to its controller


@contextmanager
def _ray_train_env(start_timeout_s: float | None):
    """Ray Train's settings for one fit(), as environment variables its controller reads (an explicit setting
    wins): the worker-group start timeout (after a node is lost, the cluster still counts its CPUs for a while:
    an elastic run first asks for the old size and only tries a smaller one when this timeout passes) and how
    often the controller polls its workers."""
    wanted = {HEALTH_CHECK_ENV: str(HEALTH_CHECK_S)}
    if start_timeout_s is not None:
        wanted[START_TIMEOUT_ENV] = str(start_timeout_s)
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class TrainingError(RuntimeError):
    """A stage did not finish: the message says why and where the last good checkpoint is."""


def check_inputs(cfg: Config) -> None:
    """Everything that can be wrong with a run's inputs, checked before any Ray work starts."""
    from ..data.latent_format import KIND as LATENTS
    from ..data.latent_format import check_latents
    from ..data.pipeline import check_shards, list_shards

    if not cfg.data.train:
        raise ConfigError("data.train: no training shards given (make some with `vdp shard`)")
    for key in ("train", "val"):
        spec = getattr(cfg.data, key)
        if spec:
            try:
                list_shards(spec)
                manifest = check_shards(spec, cfg.data)
            except Exception as exc:
                raise ConfigError(f"data.{key}: {exc}") from None
            if (manifest or {}).get("kind") == LATENTS:
                check_latents(manifest, cfg, f"data.{key}")
    if cfg.vae.export and not (Path(cfg.vae.export) / "model.safetensors").is_file():
        raise ConfigError(f"vae.export: {cfg.vae.export} is not a VAE export (no model.safetensors)")
    if cfg.text.encoder:
        text_dim(cfg)


def text_dim(cfg: Config) -> int:
    """The width of the caption embeddings the run reads; they must exist for every split and be made by
    text.encoder with text.max_tokens (refused before any Ray work otherwise)."""
    from ..data.pipeline import run_split_folders
    from ..text import INDEX, TEXT_DIR, TextError, encoder_kind

    try:
        encoder_kind(cfg.text.encoder)
    except TextError as exc:
        raise ConfigError(f"text.encoder: {exc}") from None
    wanted = str(Path(cfg.text.encoder).resolve())
    dims = set()
    for folder in run_split_folders(cfg.data):
        index = Path(folder) / TEXT_DIR / INDEX
        if not index.is_file():
            raise ConfigError(
                f"text.encoder: {folder} has no caption embeddings; run "
                f"`vdp encode-text {folder} --encoder {cfg.text.encoder}` first"
            )
        meta = json.loads(index.read_text())
        if meta["encoder"] != wanted or meta["max_tokens"] != cfg.text.max_tokens:
            raise ConfigError(
                f"text.encoder: {folder}'s caption embeddings were made with {meta['encoder']} "
                f"(max_tokens {meta['max_tokens']}), the config asks for {wanted} (text.max_tokens "
                f"{cfg.text.max_tokens}); run `vdp encode-text` again"
            )
        if cfg.model.dit.text_dim not in (None, meta["dim"]):
            raise ConfigError(
                f"model.dit.text_dim is {cfg.model.dit.text_dim} but the embeddings in {folder} are {meta['dim']} wide"
            )
        dims.add(meta["dim"])
    if len(dims) > 1:
        raise ConfigError(f"text.encoder: the splits' caption embeddings differ in width ({sorted(dims)})")
    return dims.pop()


def resolve_run(cfg: Config) -> Config:
    """Everything outside the config file that decides the run, read once here on the driver and frozen into the
    config every worker gets: the caption embeddings' width, and the geometry and scale factor of a given VAE
    export. (A pretrained diffusers VAE's geometry was read when the config was built.)"""
    from ..export import with_vae

    if cfg.text.encoder:
        cfg = cfg.updated({"model.dit.text_dim": text_dim(cfg)})
    if cfg.vae.export:
        cfg = with_vae(cfg, cfg.vae.export)
    return cfg


def fit(
    cfg: Config, callbacks: list | None = None, verbose: bool = False, drill: Drill | None = None
) -> dict[str, Path]:
    """Train every stage of ``cfg.train.stages``; returns {stage: export folder}.

    ``callbacks`` (Ray Train ``UserCallback``s, e.g. Tune's report callback) watch the last stage only: the
    stage whose model is the result. Where this starts Ray, Ray's own output goes to the run folder's
    logs/ray.log (``verbose``: to the terminal, as Ray prints it). ``drill``: a failure made on purpose in every
    stage that reaches its step (tests and benches of recovery).
    """
    from ..fsutil import run_lock

    check_inputs(cfg)
    cfg = resolve_run(cfg)
    run_dir = Path(cfg.run.dir).resolve()
    with run_lock(run_dir, "vdp train"):  # one writer per run folder (a second run would interleave checkpoints)
        return _fit_stages(cfg, run_dir, callbacks, verbose, drill)


def _fit_stages(
    cfg: Config, run_dir: Path, callbacks: list | None, verbose: bool, drill: Drill | None
) -> dict[str, Path]:
    from ..export import WEIGHTS, with_vae, write_diffusers_vae_export
    from ..raylog import ray_log
    from ..raytools import init_ray
    from .stages import STAGE_CLASSES

    cfg.save(run_dir / "config.yaml")
    needed = math.ceil(cfg.train.workers * cfg.train.cpus_per_worker) + 2  # room for Ray Data's tasks
    init_ray(num_cpus=max(os.cpu_count() or 1, needed), log=None if verbose else ray_log(run_dir))

    if cfg.vae.diffusers:  # a pretrained per-frame VAE: wrapped once as this run's VAE export
        target = run_dir / "vae_export"
        if not (target / WEIGHTS).is_file():
            write_diffusers_vae_export(target, cfg)
        cfg = with_vae(cfg, target, {"vae.diffusers": None})
    exports: dict[str, Path] = {}
    for i, stage in enumerate(cfg.train.stages):
        last = i == len(cfg.train.stages) - 1
        export_dir = run_dir / ("export" if last else f"{stage}_export")
        exports[stage] = run_stage(cfg, stage, run_dir, export_dir, callbacks if last else None, drill)
        cfg = STAGE_CLASSES[stage].next_config(cfg, exports[stage])  # e.g. a VAE becomes the later stages' latent space
    return exports


def run_stage(
    cfg: Config, stage: str, run_dir: Path, export_dir: Path, callbacks: list | None = None, drill: Drill | None = None
) -> Path:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..data.pipeline import clip_dataset
    from ..raytools import cluster_has_gpus

    t = cfg.train
    use_gpu = t.use_gpu == "true" or (t.use_gpu == "auto" and cluster_has_gpus())
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if use_gpu else {})}
    datasets = {"train": clip_dataset(cfg.data.train, cfg.data, train=True, seed=cfg.run.seed, keep_bad=True)}
    if cfg.data.val:
        datasets["val"] = clip_dataset(cfg.data.val, cfg.data, train=False, keep_bad=True)
    status_file = run_dir / "logs" / f"{stage}-{STATUS}"
    status_file.unlink(missing_ok=True)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "stage": stage,
            "run_dir": str(run_dir),
            "drill": drill.to_dict() if drill else None,
        },
        scaling_config=ScalingConfig(
            num_workers=t.workers if t.min_workers is None else (t.min_workers, t.workers),
            elastic_resize_monitor_interval_s=t.resize_check_s,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=t.placement.upper(),
        ),
        run_config=RunConfig(
            name=f"{cfg.run.name}-{stage}",  # fixed: the same command resumes the same run
            storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=callbacks or [],
        ),
        datasets=datasets,
    )
    try:
        with _ray_train_env(t.start_timeout_s or (ELASTIC_START_TIMEOUT_S if t.min_workers else None)):
            result = trainer.fit()
    except Exception as exc:
        raise TrainingError(f"the {stage} stage failed: {exc}") from exc
    if status_file.is_file():
        status = json.loads(status_file.read_text())
        raise TrainingError(status["message"])
    if result.checkpoint is None:
        raise TrainingError(f"the {stage} stage ended without a checkpoint")
    weights, score = selected_weights(run_dir, stage, cfg.train.select_by)
    with result.checkpoint.as_directory() as directory:
        return export_checkpoint(directory, export_dir, cfg=cfg, selected=None if weights is None else (weights, score))
