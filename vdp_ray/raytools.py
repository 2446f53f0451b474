"""Connecting to Ray: a cluster when one is named (RAY_ADDRESS, `ray job submit`), else an embedded one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .raylog import divert_ray_loggers, sort_worker_output


def init_ray(num_cpus: int | None = None, log: Path | None = None) -> None:
    """Start or join Ray once per process. Without RAY_ADDRESS this starts a local Ray on this machine. ``log``:
    a file for Ray's own output, leaving the terminal to our lines (``raylog``); None: Ray prints where it does."""
    import ray

    if ray.is_initialized():
        return
    file = divert_ray_loggers(log) if log is not None else None
    # A cluster is joined only when RAY_ADDRESS names it; otherwise a new Ray of our own, even when another
    # process on this machine runs one (ray.init() without an address would join that one, and refuse num_cpus).
    address = os.environ.get("RAY_ADDRESS") or "local"
    own = {"num_cpus": num_cpus} if address == "local" and num_cpus is not None else {}
    ray.init(address=address, logging_level="WARNING", log_to_driver=True, **own)
    quiet_ray_data()
    if file is not None and sort_worker_output(file):
        print(f"[vdp] Ray's own output goes to {log} (--verbose: to the terminal)", file=sys.stderr, flush=True)


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars flood logs that are not a terminal; our loop reports progress."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def cluster_has_gpus() -> bool | None:
    """Whether work can get a GPU on the connected cluster: GPUs there now, or GPU nodes its autoscaler can
    start (a GPU group scaled to zero has none now). Decided from the cluster, never from the machine the
    driver runs on (a head node often has no GPU). None when no Ray is connected (nothing to ask)."""
    import ray

    if not ray.is_initialized():
        return None
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    try:  # the autoscaler's node groups (Ray's own Data autoscaler reads them the same way)
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # no autoscaler (a local Ray), or another Ray version's layout: what is there now
        return False
    return most.get("GPU", 0) > 0


class PlacementError(ValueError):
    """A device that the cluster cannot give; the message names the option."""


def gpu_placement(device: str, gpus: float | None, has_gpus, option: str = "--device") -> tuple[str, float]:
    """Where a Ray actor runs a model, as (the device it uses, the GPUs it reserves): a GPU is used only when
    reserved, and reserved only when used. ``device``: auto, cpu, cuda or cuda:N; ``gpus``: the GPUs per actor
    asked for (None: 1 when it runs on CUDA); ``has_gpus``: ``cluster_has_gpus`` (called only when the answer
    matters; None from it: unknown, so auto means CPU and an explicit GPU request is trusted)."""
    if device == "cpu":
        if gpus:
            raise PlacementError(f"{option} cpu: a GPU reservation ({gpus:g}) would sit idle; drop one of them")
        return "cpu", 0.0
    available = has_gpus()
    wants_gpu = device.startswith("cuda") or bool(gpus) or (device == "auto" and bool(available))
    if not wants_gpu:
        return "cpu", 0.0
    if available is False:
        raise PlacementError(f"{option} {device}: the Ray cluster has no GPUs (and no GPU nodes it can start)")
    return ("cuda" if device == "auto" else device), float(gpus or 1.0)
