"""Tune's schedulers for a sweep: FIFO, or ASHA on training steps whose rung records survive an interrupted sweep
(Tune restores the trials but not the scheduler's state)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config
from .sweep_file import Sweep, trial_steps


def make_scheduler(sweep: Sweep, cfg: Config, state_file: Path):
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
