"""A sweep's results: a row per trial from Tune's saved state, the winner, and the files people read (results.csv,
results.md, best.yaml, best_export/, metric.png)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, read_yaml_mapping
from ..progress import format_duration
from .sweep_file import Sweep, SweepError, grid_size, set_value, shares_vae, trial_steps

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


def trial_rows(grid, sweep: Sweep, out: Path, planned_steps: int) -> list[TrialRow]:
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
        rows.append(
            TrialRow(
                trial=trial_id,
                params=trial_params(result.config or {}),
                status=status,
                steps=steps,
                value=None if value is None else float(value),
                best=best,
                wall_s=float(metrics.get("time_total_s", 0)),
                run_dir=str(out / "trials" / trial_id),
                error=_first_line(result.error),
                history=sorted(history.items()),
            )
        )
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
        cells = [
            r.trial + mark,
            *(short(r.params.get(k, "")) for k in keys),
            _num(r.value),
            _num(r.best),
            str(r.steps),
            r.status + (f": {r.error}" if r.error else ""),
            format_duration(r.wall_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_results(sweep: Sweep, out: Path, rows: list[TrialRow], wall_s: float) -> SweepResult:
    """results.csv, results.md, best.yaml, best_export/, metric.png in the sweep folder."""
    import csv
    import shutil

    import yaml

    from ..fsutil import swap_in
    from ..media import plot_curves

    best = pick_best(rows, sweep.mode)
    keys = sorted({k for r in rows for k in r.params})
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["trial", *keys, sweep.metric, f"best_{sweep.metric}", "steps", "status", "wall_s", "run_dir", "error"]
        )
        for r in rows:
            writer.writerow(
                [
                    r.trial,
                    *(r.params.get(k, "") for k in keys),
                    "" if r.value is None else r.value,
                    "" if r.best is None else r.best,
                    r.steps,
                    r.status,
                    round(r.wall_s, 1),
                    r.run_dir,
                    r.error,
                ]
            )
    table = results_table(rows, sweep.metric, best)
    summary = (
        f"# Sweep {sweep.name}: {sweep.metric} ({sweep.mode}), {len(rows)} trials, "
        f"{format_duration(wall_s)}\n\n{table}\n"
    )
    if best is not None:
        summary += f"\nBest: {best.trial} ({describe(best.params)}): {sweep.metric} {best.value:.4f}\n"
    (out / "results.md").write_text(summary)

    best_yaml = best_export = None
    if best is not None:
        # The base config (not the sweep's shortening overrides) with the winning values: ready for `vdp train`.
        base = read_yaml_mapping(sweep.base, SweepError, "sweep base config")
        for key, value in best.params.items():
            set_value(base, key, value)
        base.setdefault("run", {})
        base["run"]["name"] = f"{sweep.name}-best"
        base["run"]["dir"] = f"runs/{sweep.name}-best"
        Config.from_dict(base)  # it validates
        header = (
            f"# The winner of sweep {sweep.name} ({sweep.path}): {describe(best.params)}, {sweep.metric} "
            f"{best.value:.4f} after {best.steps} steps\n# = {sweep.base} with those values. "
            f"Train it: vdp train {out / 'best.yaml'}\n"
        )
        best_yaml = out / "best.yaml"
        best_yaml.write_text(header + yaml.safe_dump(base, sort_keys=False))
        source = Path(best.run_dir) / "export"
        if (source / "model.safetensors").is_file():
            tmp = out / "best_export.writing"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp)
            swap_in(tmp, out / "best_export", "meta.json")
            best_export = out / "best_export"
    curves = {
        f"{r.trial} ({brief(r.params)})": ([s for s, _ in r.history], [v for _, v in r.history])
        for r in rows
        if r.history
    }
    if curves:
        plot_curves(out / "metric.png", curves, "training step", sweep.metric, f"sweep {sweep.name}")
    return SweepResult(
        folder=out,
        metric=sweep.metric,
        mode=sweep.mode,
        rows=rows,
        best=best,
        best_yaml=best_yaml,
        best_export=best_export,
        wall_s=wall_s,
        total=grid_size(sweep),
    )


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
        lines.append(
            f"  shared: the VAE stage ({cfg.vae.max_steps or cfg.train.max_steps} steps) is trained once, "
            "before the trials, and every trial trains its DiT on it"
        )
    lines += [f"  fixed: {k} = {v}" for k, v in sweep.overrides.items()]
    lines += [f"  space: {k}: {spec}" for k, spec in sweep.space.items()]
    return "\n".join(lines)


def trial_params(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("__")}


def short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def describe(config: dict) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in trial_params(config).items())


def brief(params: dict) -> str:
    return " ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in params.items())
