"""The few collectives the loop needs, each a decision every rank must take the same way at the same step.

They run on the device the caller names: NCCL (GPU) collectives refuse CPU tensors. Without a process group
(one worker, or a test) each is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _group() -> bool:
    return dist.is_initialized()


def step_flags(loss: torch.Tensor, stop: bool) -> tuple[bool, bool]:
    """(the loss is finite on every rank, some rank asks to stop): one collective for both checks of a step."""
    flags = torch.stack([(~torch.isfinite(loss.detach()).all()).float(), torch.tensor(float(stop), device=loss.device)])
    if _group():
        dist.all_reduce(flags)
    bad_loss, stop_any = flags.tolist()
    return bad_loss == 0, stop_any > 0


def rank0_value(value: float, device) -> float:
    """Rank 0's number for everyone (e.g. how much of the time budget its clock says is used): all ranks stop,
    and set their learning rate, the same way at the same step (float64 on the wire)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if _group():
        dist.broadcast(t, src=0)
    return t.item()


def mean_across(value: float, device) -> float:
    """The mean of a number over all ranks (float64 on the wire)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if _group():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.item()


def broadcast_from_rank0(obj):
    """Rank 0's Python object on every rank (e.g. the metrics only rank 0 computed)."""
    if not _group():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, world: int) -> list:
    """Every rank's Python object, in rank order."""
    if not _group():
        return [obj]
    everyone = [None] * world
    dist.all_gather_object(everyone, obj)
    return everyone
