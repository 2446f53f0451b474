"""Connecting to Ray: a cluster when one is named (RAY_ADDRESS, `ray job submit`), else an embedded one."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process. Without RAY_ADDRESS this starts a local Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"logging_level": "WARNING", "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        # a new Ray of our own, even when another process on this machine runs one (plain ray.init() would
        # join that one, and refuse num_cpus); a cluster is joined only when RAY_ADDRESS names it
        kwargs["address"] = "local"
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars flood logs that are not a terminal; our loop reports progress."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
