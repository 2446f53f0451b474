"""The anchor: where the network's clean-clip prediction starts from, in one object.

``diffusion.anchor`` chooses it and ``diffusion.motion_kernel`` sizes its motion kernels:

* ``none``: no anchor. The network predicts in its objective's space (eps, v or x0) from nothing, as in DDPM.
* ``last``: the network predicts the clean clip as a change from the nearest given frame (``chain.nearest_given``).
  Its output layers start at zero, so an untrained model predicts copy-last.
* ``motion``: the change corrects the given frames' own motion carried on (``estimate.estimate_motion``), and the
  network sees the clip that motion builds as a reference clip beside its input. An untrained model extrapolates.

With a kernel K > 0 (``last`` or ``motion``), the network also outputs K^2 motion weights per pixel that move each
frame from the one before (``kernels.moved``); ``motion`` needs them to carry its estimate.

``Anchor`` answers everything that follows from the choice (the network's extra outputs and reference channels,
the space its output is in, whether an untrained model is worth scoring), and ``Anchor.prepare`` makes one batch's
``AnchorState`` once per condition: training and the sampler then turn a raw network output into its prediction
with ``AnchorState.apply``, the one place that does. Models and diffusion both ask it; it knows neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..vocab import ANCHORS
from .chain import chain, nearest_given, nearest_side
from .estimate import MotionEstimate, estimate_motion
from .kernels import moved


@dataclass(frozen=True)
class Anchor:
    kind: str = "last"  # none | last | motion (vocab.ANCHORS)
    kernel: int = 0  # K of the K x K motion kernels; 0: none

    def __post_init__(self):
        if self.kind not in ANCHORS:
            raise ValueError(f"diffusion.anchor must be one of {', '.join(ANCHORS)}, got {self.kind!r}")
        if self.kernel < 0 or (self.kernel and self.kernel % 2 == 0):
            raise ValueError(f"diffusion.motion_kernel must be 0 or odd (3, 5, 7, ...), got {self.kernel}")
        if self.kernel and self.kind == "none":
            raise ValueError("diffusion.motion_kernel needs an anchor to move (diffusion.anchor: last or motion)")
        if self.kind == "motion" and not self.kernel:
            raise ValueError(
                "diffusion.anchor: motion needs motion kernels to carry its estimate "
                "(diffusion.motion_kernel, e.g. 5: K // 2 pixels of motion per frame)"
            )

    @classmethod
    def of_config(cls, diffusion) -> Anchor:
        """The anchor a ``DiffusionConfig`` (``diffusion.anchor``, ``diffusion.motion_kernel``) chooses."""
        return cls(diffusion.anchor, diffusion.motion_kernel)

    @property
    def predicts_change(self) -> bool:
        """Whether the network's output is the clean clip as a change from the anchor (else: the objective's
        space). Such a network starts at zero, so untrained it predicts the anchor itself: copy-last or the motion
        estimate, a model worth scoring (an export candidate) before any training."""
        return self.kind != "none"

    @property
    def extra_channels(self) -> int:
        """Output channels the network has beyond the clip's: K^2 motion weights per pixel."""
        return self.kernel * self.kernel

    def reference_channels(self, channels: int) -> int:
        """Input channels of the reference clip the network sees beside its input (the motion estimate's clip)."""
        return channels if self.kind == "motion" else 0

    def output_space(self, prediction_type: str) -> str:
        """What ``AnchorState.apply`` gives: x0 for an anchored network, else the objective's prediction type."""
        return "x0" if self.predicts_change else prediction_type

    def prepare(self, frames: torch.Tensor | None, mask: torch.Tensor | None) -> AnchorState:
        """One batch's anchor for clips (N, C, T, ...) whose ``mask`` (N, T) frames are given (None: nothing given,
        e.g. generation): computed once per condition, not per network call."""
        if frames is None or mask is None or not self.predicts_change:
            return AnchorState(self)
        if self.kind == "motion":
            return AnchorState(self, frames, mask, estimate_motion(frames, mask, self.kernel))
        return AnchorState(self, frames, mask)


@dataclass
class AnchorState:
    """An anchor prepared for one batch: the given frames it starts from and, for ``motion``, their estimate."""

    anchor: Anchor
    frames: torch.Tensor | None = None  # (N, C, T, H, W); only the given positions are read
    mask: torch.Tensor | None = None  # (N, T) bool, True = given
    estimate: MotionEstimate | None = None

    def inputs(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The network's extra inputs: the reference clip (zeros for the null condition), or nothing."""
        return {} if self.estimate is None else {"reference": self.estimate.clip.to(dtype)}

    def without_frames(self) -> AnchorState:
        """The null condition of the same batch (guidance): no given frames, and a reference clip of zeros (made
        once here, not at every sampling step) where the network takes one."""
        null = None if self.estimate is None else self.estimate._replace(clip=torch.zeros_like(self.estimate.clip))
        return AnchorState(self.anchor, estimate=null)

    def apply(self, out: torch.Tensor) -> torch.Tensor:
        """A raw network output (N, C [+ K^2], T, H, W) as its prediction: unchanged without an anchor (the
        objective's space); else the clean clip, the change added to the anchor, every frame first moved from the
        one before it by the motion weights (after the estimate's own move, for ``motion``). No given frames
        (generation, the null condition): the change alone."""
        if not self.anchor.predicts_change:
            return out
        k2 = self.anchor.extra_channels
        change, weights = out[:, : out.shape[1] - k2], out[:, out.shape[1] - k2 :]
        if self.frames is None or self.mask is None:
            return change
        frames = self.frames.to(out.dtype)
        if not k2:
            return change + nearest_given(frames, self.mask)
        first = None if self.estimate is None else self.estimate.weights.to(out.dtype)
        return change + moved(frames, self.mask, weights, self.anchor.kernel, first)


__all__ = [
    "Anchor",
    "AnchorState",
    "MotionEstimate",
    "chain",
    "estimate_motion",
    "moved",
    "nearest_given",
    "nearest_side",
]
