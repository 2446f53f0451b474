"""Ray Tune sweeps over any config keys: ``vdp tune SWEEP.yaml`` / ``vdp_ray.tune.sweep(path)``.

Every mistake in a sweep file is refused here, naming the key, before any trial starts. Each trial is
Ray Train V2's documented pattern: a plain function that builds the run's config and calls the same
``fit`` as ``vdp train``, with Tune's report callback on the last stage; ASHA stops weak trials early on
the validation metric the training loop reports. The sweep folder gets ``results.csv``, ``results.md``,
``best.yaml``, ``best_export/`` and ``metric.png``; re-running the same command resumes an interrupted
sweep without re-running finished trials.

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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, ConfigError, apply_override, parse_value, read_yaml_mapping
from .progress import format_duration

# What the training loop reports at every validation (train.val_every), and which way is better.
# psnr metrics come from the preview on validation clips, so they need data.val.
METRICS = {"val/loss": "min", "val/psnr": "max", "val/psnr_gain": "max", "loss": "min"}
SPACE_KINDS = ("choice", "uniform", "loguniform", "randint")
TOP_KEYS = ("base", "metric", "mode", "space", "overrides", "num_samples", "scheduler", "max_concurrent_trials",
            "name", "dir")  # fmt: skip
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
            _set(values, key, value)
        return values

    def config_for(self, params: dict) -> Config:
        """The base config with the fixed overrides and one trial's parameters applied."""
        values = self.base_values()
        for key, value in params.items():
            _set(values, key, value)
        return Config.from_dict(values)


def _set(values: dict, key: str, value) -> None:
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

    sweep = Sweep(path=path, base=base, metric=metric, mode=mode, space=space, overrides=fixed,
                  num_samples=raw.get("num_samples", 1), scheduler=scheduler,
                  max_concurrent_trials=raw.get("max_concurrent_trials", 1), name=str(raw.get("name", path.stem)),
                  dir=raw.get("dir"))  # fmt: skip
    _check(sweep)
    return sweep


def _check(sweep: Sweep) -> None:
    """Every value a trial can get must make a valid config: refuse now, naming the key and the value."""
    where = f"{sweep.path}"
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
            raise SweepError(f"{where}: scheduler.asha.grace_period: expected 1..{steps} (the trial's steps), "
                             f"got {grace!r}")  # fmt: skip
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
    from .train.engine import stage_steps

    return stage_steps(cfg, cfg.train.stages[-1])


# ------------------------------------------------------------------------------------------ running
RESULT_FILES = ("results.csv", "results.md", "best.yaml", "metric.png", "best_export")
STATE_FILE = "sweep.json"  # what this folder's sweep is: a re-run resumes it only if it is the same sweep


@dataclass
class TrialRow:
    trial: str
    params: dict
    status: str  # done | stopped early | error | unfinished
    steps: int
    value: float | None  # the metric at the last report
    best: float | None  # the best value it reported
    wall_s: float
    run_dir: str
    error: str = ""
    history: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SweepResult:
    folder: Path
    metric: str
    mode: str
    rows: list[TrialRow]
    best: TrialRow | None
    best_yaml: Path | None
    best_export: Path | None
    wall_s: float
    total: int  # trials the sweep asks for

    @property
    def unfinished(self) -> int:
        """Trials still to run (an interrupted sweep): re-running the same command runs them."""
        return self.total - sum(1 for r in self.rows if r.status != "unfinished")

    def table(self) -> str:
        return results_table(self.rows, self.metric, self.best)


def sweep(sweep: Sweep | str | Path, overrides: list[str] | tuple[str, ...] = (), *, folder: str | Path | None = None,
          restart: bool = False, progress: bool = True) -> SweepResult:  # fmt: skip
    """Run (or resume) a sweep; returns every trial's row and the winner. ``folder`` replaces the sweep's dir."""
    import shutil
    import time

    from ray import tune

    from .raytools import init_ray
    from .train.trainer import check_inputs

    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, overrides)
    out = Path(folder or sweep.folder).resolve()
    base_cfg = sweep.config_for({})
    check_inputs(base_cfg)  # shards and VAE exports exist: before any Ray work
    identity = _identity(sweep)
    if restart and out.exists():
        shutil.rmtree(out)
    _claim(out, identity)

    start = time.perf_counter()
    t = base_cfg.train
    per_trial = t.workers * t.cpus_per_worker + 1  # + room for each trial's Ray Data tasks
    init_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(sweep.max_concurrent_trials * per_trial) + 1))

    values = _absolute_paths(sweep.base_values())
    shared = _shared_vae(sweep, values, out, progress)
    if shared is not None:
        values = shared
    trainable = tune.with_resources(
        tune.with_parameters(_trial, values=values, folder=str(out), name=sweep.name, metric=sweep.metric),
        {"CPU": 0.01},  # the trial only drives (Tune refuses 0): its Ray Train workers hold train.*_per_worker
    )
    experiment = out / "tune"
    planned = trial_steps(Config.from_dict(values))
    reporter = _progress_callback(sweep, grid_size(sweep), planned, progress)
    if tune.Tuner.can_restore(str(experiment)):
        reporter.say(f"resuming the sweep in {out} (finished trials are kept, unfinished ones continue)")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(sweep),
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials,
                scheduler=_scheduler(sweep, base_cfg, out / "asha.json"),
                trial_name_creator=lambda trial: f"{sweep.name}_{trial.trial_id}",
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(out), callbacks=[reporter], verbose=0),
        )
    grid = tuner.fit()
    rows = _rows(grid, sweep, out, planned)
    result = write_results(sweep, out, rows, time.perf_counter() - start)
    if progress:
        print(result.table(), flush=True)
    return result


def _trial(params: dict, values: dict, folder: str, name: str, metric: str) -> None:
    """One trial, inside a Tune trial actor: the sweep's config with this trial's values, trained by the
    same ``fit`` as ``vdp train``, under a unique run name and folder (a repeated name would resume)."""
    import copy

    import ray.tune

    from .raytools import quiet_ray_data
    from .train.trainer import fit

    quiet_ray_data()  # this trial's process drives its own Ray Data pipelines
    trial_id = ray.tune.get_context().get_trial_id()
    values = copy.deepcopy(values)
    for key, value in params.items():
        _set(values, key, value)
    values.setdefault("run", {})
    values["run"]["name"] = f"{name}-{trial_id}"
    values["run"]["dir"] = str(Path(folder) / "trials" / trial_id)
    fit(Config.from_dict(values), callbacks=[_metric_reporter(metric)])


def _metric_reporter(metric: str):
    """Tune's report callback, passing on only the reports that carry the sweep's metric (the loop also
    reports at checkpoints between validations): every result Tune sees can be ranked."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class MetricReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return MetricReport()


def _scheduler(sweep: Sweep, cfg: Config, state_file: Path):
    from ray.tune.schedulers import FIFOScheduler

    if "asha" not in sweep.scheduler:
        return FIFOScheduler()
    args = sweep.scheduler["asha"] or {}
    return _resumable_asha(state_file)(
        time_attr="step",
        max_t=trial_steps(cfg),
        grace_period=args.get("grace_period", 1),
        reduction_factor=args.get("reduction_factor", 4),
        brackets=args.get("brackets", 1),
        stop_last_trials=False,  # a trial that reaches the last step returns by itself, after writing its export
    )


def _resumable_asha(state_file: Path):
    """ASHA whose rungs (every trial's metric at each milestone) survive an interrupted sweep: Tune restores
    the trials but not the scheduler's records, so a resumed trial would otherwise only be compared with the
    other resumed ones. The records are a small JSON beside the results."""
    import logging

    from ray.tune.schedulers import ASHAScheduler

    class ResumableASHA(ASHAScheduler):
        loaded = False

        def _load(self) -> None:
            if self.loaded:
                return
            self.loaded = True
            if not state_file.is_file():
                return
            try:
                saved = json.loads(state_file.read_text())
                for bracket, rungs in zip(self._brackets, saved["rungs"], strict=True):
                    for (_, recorded), (_, old) in zip(bracket._rungs, rungs, strict=True):
                        recorded.update(old)
                for trial_id, index in saved["trials"].items():
                    self._trial_info[trial_id] = self._brackets[index]
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                logging.getLogger("vdp_ray.tune").warning(
                    "could not restore the ASHA records from %s (%s): resumed trials are compared only with each other",
                    state_file,
                    exc,
                )

        def _save(self) -> None:
            state = {
                "rungs": [[[m, dict(r)] for m, r in b._rungs] for b in self._brackets],
                "trials": {t: self._brackets.index(b) for t, b in self._trial_info.items()},
            }
            tmp = state_file.with_suffix(".writing")
            tmp.write_text(json.dumps(state))
            tmp.replace(state_file)

        def on_trial_add(self, tune_controller, trial):
            self._load()
            if trial.trial_id not in self._trial_info:
                super().on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            self._load()
            action = super().on_trial_result(tune_controller, trial, result)
            self._save()
            return action

        def on_trial_complete(self, tune_controller, trial, result):
            self._load()
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    return ResumableASHA


def _identity(sweep: Sweep) -> dict:
    return {"base": sweep.base_values(), "space": sweep.space, "metric": sweep.metric, "mode": sweep.mode,
            "num_samples": sweep.num_samples, "scheduler": sweep.scheduler}  # fmt: skip


def _claim(out: Path, identity: dict) -> None:
    """A sweep folder belongs to one sweep: resuming a different one there would mix their trials."""
    state = out / STATE_FILE
    if state.is_file():
        previous = json.loads(state.read_text())
        if previous != json.loads(json.dumps(identity)):
            changed = sorted(k for k in identity if json.dumps(previous.get(k), sort_keys=True)
                             != json.dumps(identity[k], sort_keys=True))  # fmt: skip
            raise SweepError(f"{out} holds a different sweep (changed: {', '.join(changed)}): give another "
                             "folder (dir= in the sweep file or --dir), or --restart to discard it")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(identity, indent=1, sort_keys=True))


def _absolute_paths(values: dict) -> dict:
    """Trials run in other processes (other nodes on a cluster): local paths must not depend on a cwd."""
    for section, key in (("data", "train"), ("data", "val"), ("vae", "export")):
        spec = values.get(section, {}).get(key)
        if isinstance(spec, str) and spec:
            parts = [p.strip() for p in spec.split(",") if p.strip()]
            values[section][key] = ",".join(p if "://" in p else str(Path(p).resolve()) for p in parts)
    return values


def shares_vae(sweep: Sweep, cfg: Config) -> bool:
    """Whether every trial would train the same VAE: a VAE stage first, and no searched key the VAE stage
    reads: vae.*, data.*, run.*, train.* (but not train.lr / train.max_steps / train.batch_size when vae.lr /
    vae.max_steps / vae.batch_size replace them); the denoiser's model.* and diffusion.* it never sees."""
    own = {"train.lr": cfg.vae.lr, "train.max_steps": cfg.vae.max_steps, "train.batch_size": cfg.vae.batch_size}
    reads = [k for k in sweep.space if k.split(".")[0] in ("vae", "data", "train", "run") and not own.get(k)]
    return cfg.train.stages[0] == "vae" and not reads


def _shared_vae(sweep: Sweep, values: dict, out: Path, progress: bool) -> dict | None:
    """A two-stage (VAE, DiT) base whose VAE no trial changes trains that VAE once, before the trials, into
    OUT/vae; every trial then trains only its DiT on it. None when each trial needs its own VAE."""
    import copy

    from .train.trainer import fit

    cfg = Config.from_dict(values)
    if not shares_vae(sweep, cfg):
        return None
    vae_values = copy.deepcopy(values)
    vae_values["run"] = {**vae_values.get("run", {}), "name": f"{sweep.name}-vae", "dir": str(out / "vae")}
    vae_values["train"] = {**vae_values.get("train", {}), "stages": ["vae"]}
    export = out / "vae" / "export"
    if not (export / "model.safetensors").is_file():
        if progress:
            print(f"[vdp tune] training the shared VAE once (no trial changes it): {out / 'vae'}", flush=True)
        fit(Config.from_dict(vae_values))
    shared = copy.deepcopy(values)
    shared["vae"] = {**shared.get("vae", {}), "export": str(export)}
    shared["train"] = {**shared.get("train", {}), "stages": cfg.train.stages[1:]}
    return shared


def _progress_callback(sweep: Sweep, total: int, planned_steps: int, enabled: bool):
    """Progress lines on the driver: trials running / done / stopped early / failed, the best so far, ETA."""
    import time

    from ray.tune import Callback

    sign = 1 if sweep.mode == "max" else -1

    class Progress(Callback):
        def __init__(self):
            self.start = time.time()
            self.last_line = 0.0
            self.durations: list[float] = []

        def setup(self, **info):  # every (re)start of the sweep: a resumed sweep's clock starts again
            self.start, self.durations = time.time(), []

        def say(self, text: str) -> None:
            if enabled:
                print(f"[vdp tune] {text}", flush=True)

        def status(self, trials, event: str = "", ended=None, how: str = "TERMINATED") -> None:
            """``ended``: the trial the callback is about, counted as ``how`` (Tune updates its status after the
            callback)."""
            self.last_line = time.time()
            by = {}
            for t in trials:
                status = how if t is ended else t.status
                by[status] = by.get(status, 0) + 1
            finished = [t for t in trials if (how if t is ended else t.status) == "TERMINATED"]
            stopped = sum(1 for t in finished if (t.last_result or {}).get("step", 0) < planned_steps)
            scored = [t for t in trials if sweep.metric in (t.last_result or {})]
            parts = [f"{by.get('RUNNING', 0)} running", f"{len(finished)} done ({stopped} stopped early)",
                     f"{by.get('ERROR', 0)} failed", f"of {total}"]  # fmt: skip
            if scored:
                best = max(scored, key=lambda t: sign * t.last_result[sweep.metric])
                params = _brief(_params(best.config))
                parts.append(f"best {sweep.metric} {best.last_result[sweep.metric]:.4f} ({params})")
            elapsed = time.time() - self.start
            parts.append(f"elapsed {format_duration(elapsed)}")
            left = total - len(finished) - by.get("ERROR", 0)
            if self.durations and left > 0:
                mean = sum(self.durations) / len(self.durations)
                parts.append(f"ETA ~{format_duration(mean * math.ceil(left / sweep.max_concurrent_trials))}")
            self.say((f"{event}: " if event else "") + " | ".join(parts))

        def on_trial_start(self, iteration, trials, trial, **info):
            self.status(trials, f"started {trial.trial_id} ({_describe(trial.config)})", ended=trial, how="RUNNING")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if time.time() - self.last_line > 30:
                self.status(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            self.durations.append(result.get("time_total_s", 0.0))
            step = result.get("step", 0)
            how = "finished" if step >= planned_steps else f"stopped early at step {step}"
            self.status(trials, f"{trial.trial_id} {how}", ended=trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.status(trials, f"{trial.trial_id} failed", ended=trial, how="ERROR")

    return Progress()


def _params(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("__")}


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _describe(config: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in _params(config).items())


def _brief(params: dict) -> str:
    return " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in params.items())


def grid_size(sweep: Sweep) -> int:
    n = sweep.num_samples
    for spec in sweep.space.values():
        if "choice" in spec:
            n *= len(spec["choice"])
    return n


def _rows(grid, sweep: Sweep, out: Path, planned_steps: int) -> list[TrialRow]:
    from ray.tune import ExperimentAnalysis

    # the saved experiment state is the authority on which trials ended (an interrupted sweep leaves some
    # PENDING or RUNNING there: they run when the sweep is resumed)
    statuses = {t.trial_id: t.status for t in ExperimentAnalysis(str(out / "tune")).trials}
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        metrics = result.metrics or {}
        history: dict[int, float] = {}
        frame = result.metrics_dataframe
        if frame is not None and sweep.metric in frame and "step" in frame:
            for step, value in zip(frame["step"], frame[sweep.metric], strict=True):
                if value == value:  # not NaN
                    history[int(step)] = float(value)
        steps = int(metrics.get("step", max(history, default=0)))
        if result.error is not None:
            status = "error"
        elif statuses.get(trial_id) != "TERMINATED":
            status = "unfinished"
        else:
            status = "done" if steps >= planned_steps else "stopped early"
        values = list(history.values())
        best = (max if sweep.mode == "max" else min)(values) if values else None
        value = metrics.get(sweep.metric)
        rows.append(TrialRow(
            trial=trial_id, params=_params(result.config or {}), status=status, steps=steps,
            value=None if value is None else float(value), best=best, wall_s=float(metrics.get("time_total_s", 0)),
            run_dir=str(out / "trials" / trial_id), error=_first_line(result.error), history=sorted(history.items()),
        ))  # fmt: skip
    rows.sort(key=lambda r: r.trial)
    return rows


def _first_line(error) -> str:
    if error is None:
        return ""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def pick_best(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The winner: the best final metric among trials that ran to the end (an early-stopped trial's metric is
    from fewer steps); among all scored trials only when none finished."""
    sign = 1 if mode == "max" else -1
    for pool in ([r for r in rows if r.status == "done"], rows):
        scored = [r for r in pool if r.value is not None and r.value == r.value]
        if scored:
            return max(scored, key=lambda r: sign * r.value)
    return None


def results_table(rows: list[TrialRow], metric: str, best: TrialRow | None) -> str:
    keys = sorted({k for r in rows for k in r.params})
    head = ["trial", *keys, metric, f"best {metric}", "steps", "status", "wall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = " **best**" if best is not None and r.trial == best.trial else ""
        cells = [r.trial + mark, *(_short(r.params.get(k, "")) for k in keys), _num(r.value), _num(r.best),
                 str(r.steps), r.status + (f": {r.error}" if r.error else ""), format_duration(r.wall_s)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_results(sweep: Sweep, out: Path, rows: list[TrialRow], wall_s: float) -> SweepResult:
    """results.csv, results.md, best.yaml, best_export/, metric.png in the sweep folder."""
    import csv
    import shutil

    import yaml

    from .fsutil import swap_in
    from .media import plot_curves

    best = pick_best(rows, sweep.mode)
    keys = sorted({k for r in rows for k in r.params})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *keys, sweep.metric, f"best_{sweep.metric}", "steps", "status", "wall_s",
                         "run_dir", "error"])  # fmt: skip
        for r in rows:
            writer.writerow([r.trial, *(r.params.get(k, "") for k in keys), "" if r.value is None else r.value,
                             "" if r.best is None else r.best, r.steps, r.status, round(r.wall_s, 1), r.run_dir,
                             r.error])  # fmt: skip
    table = results_table(rows, sweep.metric, best)
    summary = (f"# Sweep {sweep.name}: {sweep.metric} ({sweep.mode}), {len(rows)} trials, "
               f"{format_duration(wall_s)}\n\n{table}\n")  # fmt: skip
    if best is not None:
        summary += f"\nBest: {best.trial} ({_describe(best.params)}): {sweep.metric} {best.value:.4f}\n"
    (out / "results.md").write_text(summary)

    best_yaml = best_export = None
    if best is not None:
        # The base config (not the sweep's shortening overrides) with the winning values: ready for `vdp train`.
        base = read_yaml_mapping(sweep.base, SweepError, "sweep base config")
        for key, value in best.params.items():
            _set(base, key, value)
        base.setdefault("run", {})
        base["run"]["name"] = f"{sweep.name}-best"
        base["run"]["dir"] = f"runs/{sweep.name}-best"
        Config.from_dict(base)  # it validates
        header = (f"# The winner of sweep {sweep.name} ({sweep.path}): {_describe(best.params)}, {sweep.metric} "
                  f"{best.value:.4f} after {best.steps} steps\n# = {sweep.base} with those values. "
                  f"Train it: vdp train {out / 'best.yaml'}\n")  # fmt: skip
        best_yaml = out / "best.yaml"
        best_yaml.write_text(header + yaml.safe_dump(base, sort_keys=False))
        source = Path(best.run_dir) / "export"
        if (source / "model.safetensors").is_file():
            tmp = out / "best_export.writing"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp)
            swap_in(tmp, out / "best_export")
            best_export = out / "best_export"
    curves = {f"{r.trial} ({_brief(r.params)})": ([s for s, _ in r.history], [v for _, v in r.history])
              for r in rows if r.history}  # fmt: skip
    if curves:
        plot_curves(out / "metric.png", curves, "training step", sweep.metric, f"sweep {sweep.name}")
    return SweepResult(folder=out, metric=sweep.metric, mode=sweep.mode, rows=rows, best=best, best_yaml=best_yaml,
                       best_export=best_export, wall_s=wall_s, total=grid_size(sweep))  # fmt: skip


def describe_trials(sweep: Sweep, folder: str | Path | None = None) -> str:
    """What a sweep would run (``vdp tune --dry-run``): the fixed values, the space, the trial count, where."""
    cfg = sweep.config_for({})
    head = (
        f"sweep {sweep.name}: {grid_size(sweep)} trial(s) ({sweep.num_samples} per grid point), {sweep.metric} "
        f"({sweep.mode}), scheduler {next(iter(sweep.scheduler))}, {sweep.max_concurrent_trials} at a time"
    )
    each = (
        f"  each trial: {trial_steps(cfg)} steps of {cfg.train.stages[-1]}, "
        f"{cfg.train.workers} worker(s) x {cfg.train.cpus_per_worker:g} CPU"
        + (f" + {cfg.train.gpus_per_worker:g} GPU (on a cluster with GPUs)" if cfg.train.use_gpu != "false" else "")
    )
    lines = [head, f"  base: {sweep.base}", f"  folder: {Path(folder or sweep.folder)}", each]
    if shares_vae(sweep, cfg):
        lines.append(f"  shared: the VAE stage ({cfg.vae.max_steps or cfg.train.max_steps} steps) is trained once, "
                     "before the trials, and every trial trains its DiT on it")  # fmt: skip
    lines += [f"  fixed: {k} = {v}" for k, v in sweep.overrides.items()]
    lines += [f"  space: {k}: {spec}" for k, spec in sweep.space.items()]
    return "\n".join(lines)
