"""Exponential moving average of weights (Polyak averaging), the weights an export ships."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """ema = decay * ema + (1 - decay) * weights, with a warm-up so short runs are not dominated by the
    random initialisation: the effective decay is min(decay, (1 + n) / (10 + n)) after n updates
    (as in TensorFlow's ExponentialMovingAverage with num_updates)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                s.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load(self, state: dict[str, torch.Tensor], updates: int) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
        self.updates = updates
