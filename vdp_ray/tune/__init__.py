"""Ray Tune sweeps over any config keys: ``vdp tune SWEEP.yaml`` / ``vdp_ray.tune.sweep(path)``.

``sweep_file`` reads and checks a sweep file (every mistake refused before a trial starts), ``runner`` runs the
trials (each the same ``fit`` as `vdp train`), ``asha`` holds the resumable ASHA scheduler, ``progress`` the
driver's progress lines, ``results`` the rows, the winner and the files in the sweep folder.
"""

from .results import RESULT_FILES, SweepResult, TrialRow, describe_trials, pick_best, results_table, write_results
from .runner import sweep
from .sweep_file import METRICS, Sweep, SweepError, grid_size, load_sweep, param_space, shares_vae, trial_steps

__all__ = [
    "METRICS",
    "RESULT_FILES",
    "Sweep",
    "SweepError",
    "SweepResult",
    "TrialRow",
    "describe_trials",
    "grid_size",
    "load_sweep",
    "param_space",
    "pick_best",
    "results_table",
    "shares_vae",
    "sweep",
    "trial_steps",
    "write_results",
]
