"""Exponential moving average of weights (Polyak averaging), the weights an export ships.

The average is kept in fp32 on the device the engine's weights live on (a CPU copy of CUDA weights would make
every update a device mix, and a half-precision one would lose the small increments). Under ZeRO-3 each rank
averages only its own partition of every parameter, as the optimizer does: no rank ever holds the whole
average except while ``state_dict`` gathers it (for a checkpoint, a preview or an export).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class EMA:
    """ema = decay * ema + (1 - decay) * weights, with a warm-up so short runs are not dominated by the
    random initialisation: the effective decay is min(decay, (1 + n) / (10 + n)) after n updates
    (as in TensorFlow's ExponentialMovingAverage with num_updates)."""

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | None = None):
        """``device``: where the average lives (default: where each weight is)."""
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().to(device or v.device, torch.float32, copy=True) for k, v in self._own(model)}

    @classmethod
    def of_engine(cls, engine, decay: float, zero3: bool) -> EMA:
        """The average of a DeepSpeed engine's weights, on the engine's device, built after
        ``deepspeed.initialize`` has placed (and, for ZeRO-3, partitioned) them."""
        device = getattr(engine, "device", None)
        return PartitionedEMA(engine.module, decay, device) if zero3 else cls(engine.module, decay, device)

    def _own(self, model: nn.Module):
        """(name, tensor) of what this rank averages."""
        return model.state_dict().items()

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in self._own(model):
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.detach().float(), 1 - d)  # on the weights' device: a mix is a bug, never a copy per step
            else:
                s.copy_(v)
        self.updates += 1

    def state_dict(self, everywhere: bool = True) -> dict[str, torch.Tensor]:
        """The whole average. Under ZeRO-3 a collective that every rank calls; ``everywhere=False`` assembles it
        on rank 0 only (the others get {}), so no other rank ever holds a full copy."""
        return dict(self.shadow)

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Resume from a whole average (``state_dict``'s), whichever worker count wrote it."""
        for k, v in state.items():
            self.shadow[k].copy_(v)
        self.updates = updates


class PartitionedEMA(EMA):
    """The EMA of a ZeRO-3 module: for every parameter, this rank's partition (``param.ds_tensor``, a flat slice of
    ceil(numel / world) elements, the last one padded); buffers, which ZeRO-3 does not partition, whole."""

    def __init__(self, module: nn.Module, decay: float, device=None):
        self.module = module
        super().__init__(module, decay, device)

    def _own(self, model: nn.Module):
        for k, v in model.state_dict(keep_vars=True).items():
            yield k, (v.ds_tensor if hasattr(v, "ds_tensor") else v)

    def _params(self) -> dict[str, nn.Parameter]:
        return {k: v for k, v in self.module.state_dict(keep_vars=True).items() if hasattr(v, "ds_tensor")}

    def state_dict(self, everywhere: bool = True) -> dict[str, torch.Tensor]:
        params = self._params()
        world = dist.get_world_size() if dist.is_initialized() else 1
        mine = not dist.is_initialized() or dist.get_rank() == 0 or everywhere
        out = {}
        for k, s in self.shadow.items():  # one parameter at a time: the peak is one gathered tensor
            if k not in params:
                if mine:
                    out[k] = s.clone()
                continue
            if world == 1:
                parts = [s]
            else:
                parts = [torch.empty_like(s) for _ in range(world)] if mine else None
                if everywhere:
                    dist.all_gather(parts, s)
                else:
                    dist.gather(s, parts, dst=0)
            if mine:
                p = params[k]
                out[k] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape)
        return out

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        params, rank = self._params(), dist.get_rank() if dist.is_initialized() else 0
        for k, v in state.items():
            s = self.shadow[k]
            if k not in params:
                s.copy_(v)
                continue
            size = s.numel()
            flat = v.reshape(-1).to(s.device, torch.float32)[rank * size : (rank + 1) * size]
            s.zero_()[: flat.numel()].copy_(flat)  # the last partition's padding stays zero
        self.updates = updates
