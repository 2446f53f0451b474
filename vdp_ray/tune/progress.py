"""Progress lines on the sweep's driver: trials running / done / stopped early / failed, the best so far, ETA."""

from __future__ import annotations

import math

from ..progress import format_duration
from .results import brief, describe, trial_params
from .sweep_file import Sweep


def progress_callback(sweep: Sweep, total: int, planned_steps: int, enabled: bool):
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
            parts = [
                f"{by.get('RUNNING', 0)} running",
                f"{len(finished)} done ({stopped} stopped early)",
                f"{by.get('ERROR', 0)} failed",
                f"of {total}",
            ]
            if scored:
                best = max(scored, key=lambda t: sign * t.last_result[sweep.metric])
                params = brief(trial_params(best.config))
                parts.append(f"best {sweep.metric} {best.last_result[sweep.metric]:.4f} ({params})")
            elapsed = time.time() - self.start
            parts.append(f"elapsed {format_duration(elapsed)}")
            left = total - len(finished) - by.get("ERROR", 0)
            if self.durations and left > 0:
                mean = sum(self.durations) / len(self.durations)
                parts.append(f"ETA ~{format_duration(mean * math.ceil(left / sweep.max_concurrent_trials))}")
            self.say((f"{event}: " if event else "") + " | ".join(parts))

        def on_trial_start(self, iteration, trials, trial, **info):
            self.status(trials, f"started {trial.trial_id} ({describe(trial.config)})", ended=trial, how="RUNNING")

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
