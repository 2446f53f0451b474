"""The ``diffusion`` section of the config: the objective, its schedule and prediction type, the anchor the
network's prediction starts from, and the frame-mask task mix of training. ``vdp_ray.diffusion``'s processes take
these keys by name (``DiffusionProcess(**settings)``), so a process built by hand is the one a config builds."""

from __future__ import annotations

from dataclasses import dataclass

from ..vocab import ANCHORS, LOSSES, MASK_TASKS, OBJECTIVES, PREDICTION_TYPES, SCHEDULES, TIME_DRAWS
from .fields import opt, section


@dataclass(frozen=True)
class MaskConfig:
    prediction: float = opt(0.7, "Probability of the prediction task (first k frames given).", ge=0.0, le=1.0)
    generation: float = opt(0.2, "Probability of unconditional generation (no frame given).", ge=0.0, le=1.0)
    interpolation: float = opt(0.1, "Probability of interpolation (first and last given).", ge=0.0, le=1.0)
    random: float = opt(0.0, "Probability of a random subset of frames given.", ge=0.0, le=1.0)
    context_min: int = opt(1, "Fewest given frames for prediction (pixel frames).", ge=1)
    context_max: int = opt(8, "Most given frames for prediction (pixel frames).", ge=1)
    context_drop: float = opt(
        0.1, "Probability of dropping any mask to the null condition (for guidance).", ge=0.0, le=1.0
    )

    def probs(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in MASK_TASKS}


@dataclass(frozen=True)
class DiffusionConfig:
    objective: str = opt(
        "ddpm",
        "ddpm: Gaussian diffusion on a discrete noise schedule; flow: flow matching "
        "(rectified flow) on straight paths between the clip and noise, times drawn logit-normal.",
        choices=OBJECTIVES,
    )
    schedule: str = opt("cosine", "Noise schedule (ddpm).", choices=SCHEDULES)
    num_timesteps: int = opt(
        1000, "Training timesteps (ddpm); the time scale the network sees (both).", ge=10, le=10000
    )
    zero_terminal_snr: bool = opt(False, "Rescale the schedule to SNR 0 at the last step (ddpm; needs v or x0).")
    prediction_type: str = opt(
        "v",
        "The objective's space: what the loss compares (eps, x0, or v: the VP v, or the "
        "velocity under flow). With diffusion.anchor none it is also what the network "
        "outputs.",
        choices=PREDICTION_TYPES,
    )
    min_snr_gamma: float | None = opt(None, "Min-SNR-gamma loss weighting (e.g. 5); off when unset.", gt=0.0)
    anchor: str = opt(
        "last",
        "Where the network's clean-clip prediction starts from (vdp_ray.anchor). none: nowhere, "
        "the network predicts in diffusion.prediction_type's space (plain DDPM); last: the nearest "
        "given frame, the network predicting the change (its output layers start at zero, so an "
        "untrained model is copy-last), trained in prediction_type's space; motion: the given frames' "
        "own motion carried on (block matching between consecutive frames, a straight line through "
        "each pixel's path, whole-pixel steps along it), which the network sees beside its input "
        "and corrects: an untrained model already extrapolates moving content and keeps still "
        "content. motion needs diffusion.motion_kernel.",
        choices=ANCHORS,
    )
    motion_kernel: int = opt(
        0,
        "With diffusion.anchor last or motion: the network also predicts, per frame and "
        "pixel, the weights of a K x K neighbourhood that moves the previous frame (from the "
        "nearest given one) before the change is added, so moving content keeps its shape; "
        "K // 2 pixels of motion per frame. Odd; 0 = off. The weights start as the identity "
        "(or, with anchor motion, as the estimate's move).",
        ge=0,
        le=15,
    )
    loss: str = opt(
        "mse",
        "How each predicted frame's error enters the training loss: mse, or log_mse (the mean of "
        "log(error + 1e-4), minus the frame's PSNR up to constants: every clip counts by its relative "
        "error, as mean PSNR does, so a few fast, textured clips do not dominate).",
        choices=LOSSES,
    )
    context_noise: float = opt(
        0.0,
        "Noise augmentation of the given frames in training: each clip's given frames "
        "noised to a level drawn in [0, this] of the path (the network sees the level), so "
        "roll-outs on its own predictions drift less. 0 = off.",
        ge=0.0,
        le=1.0,
    )
    flow_shift: float | None = opt(
        None,
        "flow: shift of the times towards noise, t' = s t / (1 + (s - 1) t), in "
        "training and sampling. Unset: sqrt(elements per channel / (8 x 32 x 32)) of the "
        "network's input clip, within [0.5, 8] (SD3's resolution shift).",
        gt=0.0,
        le=100.0,
    )
    times: str | None = opt(
        None,
        "How training draws noise levels: uniform, or logit_normal (time_logit_mean / "
        "_std of the path's fraction; a positive mean favours the noisy end, where a predictor "
        "learns where things go). Unset: uniform for ddpm, logit_normal for flow.",
        choices=TIME_DRAWS,
    )
    time_logit_mean: float = opt(0.0, "Mean of the logit-normal training times (diffusion.times).", ge=-5.0, le=5.0)
    time_logit_std: float = opt(1.0, "Std of the logit-normal training times (diffusion.times).", gt=0.0, le=5.0)
    masks: MaskConfig = section(MaskConfig, "Frame-mask task mix for training.")
