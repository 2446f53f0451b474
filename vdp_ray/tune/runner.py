"""Running a sweep: each trial is Ray Train V2's documented pattern, a plain function that builds the trial's config
and calls the same ``fit`` as `vdp train`, with Tune's report callback on the last stage; ASHA stops weak trials
early; re-running the same command resumes an interrupted sweep without re-running finished trials."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..config import Config
from .asha import make_scheduler
from .progress import progress_callback
from .results import STATE_FILE, SweepResult, trial_rows, write_results
from .sweep_file import Sweep, SweepError, grid_size, load_sweep, param_space, set_value, shares_vae, trial_steps


def sweep(
    sweep: Sweep | str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    folder: str | Path | None = None,
    restart: bool = False,
    progress: bool = True,
    verbose: bool = False,
) -> SweepResult:
    """Run (or resume) a sweep; returns every trial's row and the winner. ``folder`` replaces the sweep's dir.
    The folder must be new, empty or this sweep's (its record), and one sweep at a time holds it. Where this
    starts Ray, Ray's own output goes to the folder's logs/ray.log (``verbose``: to the terminal)."""
    from ..fsutil import OutputError, check_replaceable, run_lock
    from ..train.trainer import check_inputs

    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, overrides)
    out = Path(folder or sweep.folder).resolve()
    base_cfg = sweep.config_for({})
    check_inputs(base_cfg)  # shards and VAE exports exist: before any Ray work
    identity = _identity(sweep)
    try:
        check_replaceable(out, STATE_FILE, "a sweep folder")  # --restart or not: never another folder's contents
    except OutputError as exc:
        raise SweepError(f"the sweep folder (dir= or --dir): {exc}") from None
    try:
        with run_lock(out, "vdp tune"):
            if restart:
                _clear(out)
            _claim(out, identity)
            return _run(sweep, out, base_cfg, progress, verbose)
    except OutputError as exc:
        raise SweepError(f"the sweep folder: {exc}") from None


def _clear(out: Path) -> None:
    """--restart: everything of the sweep's folder but the lock this process holds."""
    import shutil

    for child in out.iterdir():
        if child.name == ".vdp.lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _run(sweep: Sweep, out: Path, base_cfg, progress: bool, verbose: bool) -> SweepResult:
    import time

    from ray import tune

    from ..raylog import ray_log
    from ..raytools import init_ray

    start = time.perf_counter()
    t = base_cfg.train
    per_trial = t.workers * t.cpus_per_worker + 1  # + room for each trial's Ray Data tasks
    cpus = max(os.cpu_count() or 1, math.ceil(sweep.max_concurrent_trials * per_trial) + 1)
    init_ray(num_cpus=cpus, log=None if verbose else ray_log(out))

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
    reporter = progress_callback(sweep, grid_size(sweep), planned, progress)
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
                scheduler=make_scheduler(sweep, base_cfg, out / "asha.json"),
                trial_name_creator=lambda trial: f"{sweep.name}_{trial.trial_id}",
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(out), callbacks=[reporter], verbose=0),
        )
    grid = tuner.fit()
    rows = trial_rows(grid, sweep, out, planned)
    result = write_results(sweep, out, rows, time.perf_counter() - start)
    if progress:
        print(result.table(), flush=True)
    return result


def _trial(params: dict, values: dict, folder: str, name: str, metric: str) -> None:
    """One trial, inside a Tune trial actor: the sweep's config with this trial's values, trained by the
    same ``fit`` as ``vdp train``, under a unique run name and folder (a repeated name would resume)."""
    import copy

    import ray.tune

    from ..raytools import quiet_ray_data
    from ..train.trainer import fit

    quiet_ray_data()  # this trial's process drives its own Ray Data pipelines
    trial_id = ray.tune.get_context().get_trial_id()
    values = copy.deepcopy(values)
    for key, value in params.items():
        set_value(values, key, value)
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


def _identity(sweep: Sweep) -> dict:
    return {
        "base": sweep.base_values(),
        "space": sweep.space,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "num_samples": sweep.num_samples,
        "scheduler": sweep.scheduler,
    }


def _claim(out: Path, identity: dict) -> None:
    """A sweep folder belongs to one sweep: resuming a different one there would mix their trials."""
    state = out / STATE_FILE
    if state.is_file():
        previous = json.loads(state.read_text())
        if previous != json.loads(json.dumps(identity)):
            changed = sorted(
                k
                for k in identity
                if json.dumps(previous.get(k), sort_keys=True) != json.dumps(identity[k], sort_keys=True)
            )
            raise SweepError(
                f"{out} holds a different sweep (changed: {', '.join(changed)}): give another "
                "folder (dir= in the sweep file or --dir), or --restart to discard it"
            )
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


def _shared_vae(sweep: Sweep, values: dict, out: Path, progress: bool) -> dict | None:
    """A two-stage (VAE, DiT) base whose VAE no trial changes trains that VAE once, before the trials, into
    OUT/vae; every trial then trains only its DiT on it. None when each trial needs its own VAE."""
    import copy

    from ..train.trainer import fit

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
