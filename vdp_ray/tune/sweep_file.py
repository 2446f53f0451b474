"""Sweep files: read, checked and turned into Ray Tune's search space. Every mistake is refused here, naming the key,
before any trial starts.

A sweep file:

    base: experiments/tiny_unet.yaml      # relative to the sweep file (or the working directory)
    metric: val/psnr_gain                 # or val/loss, val/psnr; mode inferred (loss: min, psnr: max)
    space:
      diffusion.schedule: {choice: [linear, cosine]}       # every value (a grid axis)
      diffusion.prediction_type: {choice: [eps, v, x0]}
      train.lr: {loguniform: [1.0e-4, 1.0e-3]}             # also: uniform [lo, hi], randint [lo, hi]
    overrides: {train.max_steps: 300}     # fixed for every trial
    num_samples: 1                        # per grid point
    scheduler: {asha: {grace_period: 100, reduction_factor: 3}}
    max_concurrent_trials: 2
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ConfigError, apply_override, parse_value, read_yaml_mapping
from ..config.checks import shared_folder_error

# What the training loop reports at every validation (train.val_every), and which way is better.
# psnr metrics come from the preview on validation clips, so they need data.val.
METRICS = {"val/loss": "min", "val/psnr": "max", "val/psnr_gain": "max", "loss": "min"}
SPACE_KINDS = ("choice", "uniform", "loguniform", "randint")
TOP_KEYS = (
    "base",
    "metric",
    "mode",
    "space",
    "overrides",
    "num_samples",
    "scheduler",
    "max_concurrent_trials",
    "name",
    "dir",
)
SCHEDULERS = ("asha", "fifo")
ASHA_KEYS = ("grace_period", "reduction_factor", "brackets")


class SweepError(ConfigError):
    """A sweep that cannot start; the message names the key."""


@dataclass
class Sweep:
    path: Path
    base: Path
    metric: str
    mode: str
    space: dict[str, dict]
    overrides: dict = field(default_factory=dict)
    num_samples: int = 1
    scheduler: dict = field(default_factory=dict)
    max_concurrent_trials: int = 1
    name: str = "sweep"
    dir: str | None = None

    @property
    def folder(self) -> Path:
        return Path(self.dir or f"runs/sweeps/{self.name}")

    def base_values(self) -> dict:
        values = read_yaml_mapping(self.base, SweepError, "sweep base config")
        for key, value in self.overrides.items():
            set_value(values, key, value)
        return values

    def config_for(self, params: dict) -> Config:
        """The base config with the fixed overrides and one trial's parameters applied."""
        values = self.base_values()
        for key, value in params.items():
            set_value(values, key, value)
        return Config.from_dict(values)


def set_value(values: dict, key: str, value) -> None:
    apply_override(values, f"{key}={json.dumps(value)}")  # JSON values are valid YAML


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and check a sweep file; ``overrides`` (``key=value``) change the sweep's fixed config values."""
    path = Path(path)
    raw = read_yaml_mapping(path, SweepError, "sweep file")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {unknown}; a sweep file holds {list(TOP_KEYS)}")
    if "base" not in raw:
        raise SweepError(f"{path}: base: missing (the experiment config every trial starts from)")
    base = Path(raw["base"])
    if not base.is_absolute() and not base.is_file() and (path.parent / base).is_file():
        base = path.parent / base
    if not base.is_file():
        raise SweepError(f"{path}: base: config file not found: {raw['base']}")

    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise SweepError(f"{path}: space: empty; give at least one key to search, e.g. train.lr: {{choice: [1e-4]}}")
    fixed = dict(raw.get("overrides") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        fixed[key.strip().lstrip("-")] = parse_value(value)

    metric = raw.get("metric", "val/loss")
    if metric not in METRICS:
        raise SweepError(f"{path}: metric: {metric!r} is never reported by the training loop; one of {list(METRICS)}")
    mode = raw.get("mode", METRICS[metric])
    if mode not in ("min", "max"):
        raise SweepError(f"{path}: mode: expected min or max, got {mode!r}")

    scheduler = raw.get("scheduler") or {"fifo": {}}
    if not isinstance(scheduler, dict) or len(scheduler) != 1 or next(iter(scheduler)) not in SCHEDULERS:
        raise SweepError(f"{path}: scheduler: expected one of {list(SCHEDULERS)}, e.g. {{asha: {{grace_period: 100}}}}")
    for name in ("num_samples", "max_concurrent_trials"):
        value = raw.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SweepError(f"{path}: {name}: expected a positive integer, got {value!r}")

    sweep = Sweep(
        path=path,
        base=base,
        metric=metric,
        mode=mode,
        space=space,
        overrides=fixed,
        num_samples=raw.get("num_samples", 1),
        scheduler=scheduler,
        max_concurrent_trials=raw.get("max_concurrent_trials", 1),
        name=str(raw.get("name", path.stem)),
        dir=raw.get("dir"),
    )
    _check(sweep)
    return sweep


def _check(sweep: Sweep) -> None:
    """Every value a trial can get must make a valid config: refuse now, naming the key and the value."""
    where = f"{sweep.path}"
    if sweep.dir is not None and (error := shared_folder_error(sweep.dir, "dir")):
        raise SweepError(f"{where}: {error}")
    try:
        base_cfg = sweep.config_for({})
    except ConfigError as exc:
        raise SweepError(f"{where}: base + overrides: {exc}") from None
    for key, spec in sweep.space.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
            raise SweepError(f"{where}: space.{key}: expected one of {list(SPACE_KINDS)}, e.g. {{choice: [a, b]}}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise SweepError(f"{where}: space.{key}: choice needs a non-empty list of values")
            values = args
        else:
            if not isinstance(args, list) or len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
                raise SweepError(f"{where}: space.{key}: {kind} needs [low, high] numbers, got {args!r}")
            lo, hi = args
            if not lo < hi or (kind == "loguniform" and lo <= 0):
                raise SweepError(f"{where}: space.{key}: {kind} needs 0 < low < high (log) or low < high, got {args}")
            if kind == "randint":
                hi = hi - 1  # Tune's randint excludes the upper bound
            values = [lo, hi]
        for value in values:
            try:
                sweep.config_for({key: value})
            except ConfigError as exc:
                raise SweepError(f"{where}: space.{key} = {value!r}: {exc}") from None
    args = next(iter(sweep.scheduler.values())) or {}
    if "asha" in sweep.scheduler:
        if not isinstance(args, dict) or set(args) - set(ASHA_KEYS):
            raise SweepError(f"{where}: scheduler.asha: expected a mapping of {list(ASHA_KEYS)}, got {args!r}")
        steps = trial_steps(base_cfg)
        grace = args.get("grace_period", 1)
        if not isinstance(grace, int) or not 1 <= grace <= steps:
            raise SweepError(
                f"{where}: scheduler.asha.grace_period: expected 1..{steps} (the trial's steps), got {grace!r}"
            )
        rf = args.get("reduction_factor", 4)
        if not isinstance(rf, (int, float)) or rf <= 1:
            raise SweepError(f"{where}: scheduler.asha.reduction_factor: expected a number > 1, got {rf!r}")
        brackets = args.get("brackets", 1)
        if not isinstance(brackets, int) or brackets < 1:
            raise SweepError(f"{where}: scheduler.asha.brackets: expected a positive integer, got {brackets!r}")
    elif args:
        raise SweepError(f"{where}: scheduler.fifo: takes no settings, got {args!r}")
    if sweep.metric.startswith("val/") and not base_cfg.data.val:
        raise SweepError(f"{where}: metric {sweep.metric}: needs validation shards (data.val) in the base config")


def param_space(sweep: Sweep) -> dict:
    """The Tune search space: ``choice`` becomes a grid axis (every value, ``num_samples`` times each),
    the ranges are sampled."""
    from ray import tune

    makers = {
        "choice": tune.grid_search,
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {key: makers[kind](args) for key, spec in sweep.space.items() for kind, args in spec.items()}


def trial_steps(cfg: Config) -> int:
    """Steps of the stage a trial reports to Tune (its last): the ASHA time axis."""
    from ..train.engine import stage_settings

    return stage_settings(cfg, cfg.train.stages[-1]).max_steps


def grid_size(sweep: Sweep) -> int:
    n = sweep.num_samples
    for spec in sweep.space.values():
        if "choice" in spec:
            n *= len(spec["choice"])
    return n


def shares_vae(sweep: Sweep, cfg: Config) -> bool:
    """Whether every trial would train the same VAE: a VAE stage first, and no searched key the VAE stage
    reads: vae.*, data.*, run.*, train.* (but not train.lr / train.max_steps / train.batch_size when vae.lr /
    vae.max_steps / vae.batch_size replace them); the denoiser's model.* and diffusion.* it never sees."""
    from ..train.engine import STAGE_KEYS

    own = {k for k, mine in STAGE_KEYS["vae"].items() if getattr(cfg.vae, mine.split(".")[1]) is not None}
    reads = [k for k in sweep.space if k.split(".")[0] in ("vae", "data", "train", "run") and k not in own]
    return cfg.train.stages[0] == "vae" and not reads
