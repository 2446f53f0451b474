"""Diffusion core: schedules, prediction types, frame masks and samplers. Knows nothing of models or Ray."""

from .gaussian import GaussianDiffusion, expand_to
from .masks import (
    TASKS,
    FrameMasks,
    interpolation_mask,
    latent_frame_mask,
    nearest_given,
    prediction_mask,
    sample_frame_masks,
)
from .objectives import PREDICTION_TYPES, convert, min_snr_weight, target_for, to_x0_eps
from .samplers import SAMPLERS, SPACINGS, ConditionedDenoiser, make_sampler, sample, timestep_schedule
from .schedules import SCHEDULES, make_alpha_bar

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "TASKS",
    "ConditionedDenoiser",
    "FrameMasks",
    "GaussianDiffusion",
    "convert",
    "expand_to",
    "interpolation_mask",
    "latent_frame_mask",
    "make_alpha_bar",
    "make_sampler",
    "min_snr_weight",
    "nearest_given",
    "prediction_mask",
    "sample",
    "sample_frame_masks",
    "target_for",
    "timestep_schedule",
    "to_x0_eps",
]
