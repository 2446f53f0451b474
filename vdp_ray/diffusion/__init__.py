"""Diffusion core: schedules, prediction types, frame masks, conditioning and samplers. Knows nothing of models or
Ray; the only link to a network is the call ``model(x_t, t, frame_mask, **kwargs)``."""

from ..vocab import MASK_TASKS as TASKS
from ..vocab import PREDICTION_TYPES, SAMPLERS, SCHEDULES, SPACINGS
from .conditioning import Condition, ConditionedDenoiser
from .gaussian import GaussianDiffusion, expand_to
from .masks import (
    FrameMasks,
    interpolation_mask,
    latent_frame_mask,
    nearest_given,
    prediction_mask,
    sample_frame_masks,
)
from .objectives import convert, min_snr_weight, target_for, to_x0_eps
from .samplers import make_sampler, sample, timestep_schedule
from .schedules import make_alpha_bar

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "TASKS",
    "Condition",
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
