"""Connecting to Ray: a cluster when one is named (RAY_ADDRESS, `ray job submit`), else an embedded one."""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process. Without RAY_ADDRESS this starts a local Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"logging_level": "WARNING", "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS") and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
