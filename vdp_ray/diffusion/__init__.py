"""Diffusion core: the DDPM family and flow matching, prediction types, frame masks, conditioning and samplers.
Knows nothing of models or Ray; the only link to a network is the call ``model(x_t, t, frame_mask, **kwargs)``."""

from ..anchor import Anchor, nearest_given
from ..vocab import MASK_TASKS as TASKS
from ..vocab import OBJECTIVES, PREDICTION_TYPES, SAMPLERS, SCHEDULES, SPACINGS
from .conditioning import Condition, ConditionedDenoiser
from .flow import FlowMatching, resolution_shift, shift_times
from .gaussian import GaussianDiffusion
from .masks import FrameMasks, interpolation_mask, latent_frame_mask, prediction_mask, sample_frame_masks
from .objectives import min_snr_weight_as, split_as, target_as
from .process import DiffusionProcess, expand_to
from .samplers import make_sampler, sample, timestep_schedule
from .schedules import make_alpha_bar


def make_diffusion(cfg) -> DiffusionProcess:
    """The process a ``DiffusionConfig`` describes (diffusion.objective: ddpm or flow)."""
    if cfg.objective == "flow":
        return FlowMatching.from_config(cfg)
    return GaussianDiffusion.from_config(cfg)


__all__ = [
    "OBJECTIVES",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "TASKS",
    "Anchor",
    "Condition",
    "ConditionedDenoiser",
    "DiffusionProcess",
    "FlowMatching",
    "FrameMasks",
    "GaussianDiffusion",
    "expand_to",
    "interpolation_mask",
    "latent_frame_mask",
    "make_alpha_bar",
    "make_diffusion",
    "make_sampler",
    "min_snr_weight_as",
    "nearest_given",
    "prediction_mask",
    "resolution_shift",
    "sample",
    "sample_frame_masks",
    "shift_times",
    "split_as",
    "target_as",
    "timestep_schedule",
]
