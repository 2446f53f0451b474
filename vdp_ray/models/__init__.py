"""Model families: a registry from family name to class and named presets. No diffusion, no Ray: what a network
must output and see beyond the clip is the anchor's to say (``vdp_ray.anchor``)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ..anchor import Anchor
from . import dit, unet3d, vae3d
from .dit import DiT
from .unet3d import UNet3D
from .vae3d import VAE3D, DiagonalGaussian

CLASSES: dict[str, type[nn.Module]] = {"unet3d": UNet3D, "dit": DiT, "vae": VAE3D}
PRESETS: dict[str, dict[str, dict]] = {"unet3d": unet3d.PRESETS, "dit": dit.PRESETS, "vae": vae3d.PRESETS}


def build_denoiser(cfg) -> nn.Module:
    """The denoiser named by ``cfg.model.family``, sized by its resolved section of the config."""
    family = cfg.model.family
    anchor = Anchor.of_config(cfg.diffusion)  # K^2 motion weights out per pixel; the estimate's clip in, for motion
    if family == "unet3d":
        arch = _arch(cfg.model.unet3d)
        arch["fold_frames"] = cfg.data.frames if arch.pop("fold_frames", None) else None
        channels = cfg.data.channels
    elif family == "dit":
        arch, channels = _arch(cfg.model.dit), cfg.vae.latent_channels
    else:
        raise ValueError(f"model.family: unknown denoiser family {family!r}; expected one of ['unet3d', 'dit']")
    return CLASSES[family](
        in_channels=channels,
        extra_channels=anchor.extra_channels,
        reference_channels=anchor.reference_channels(channels),
        **arch,
    )


def build_vae(cfg) -> VAE3D:
    return VAE3D(in_channels=cfg.data.channels, **_arch(cfg.vae, VAE3D))


def _arch(section, cls: type[nn.Module] | None = None) -> dict:
    """The constructor arguments held by a config section (other keys, such as loss weights, dropped)."""
    import inspect

    values = asdict(section)
    if cls is None:
        values.pop("preset", None)
        return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    params = inspect.signature(cls.__init__).parameters
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in params and k != "in_channels"}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, *inputs: torch.Tensor, **kwargs) -> int:
    """Forward FLOPs counted from shapes (matmuls, convolutions, attention) on the meta device.

    Nothing is computed: the model is copied to ``meta`` and torch's FlopCounterMode adds up the closed-form
    cost of each operator from its shapes (2 FLOPs per multiply-add). Elementwise ops are not counted.
    """
    from copy import deepcopy

    from torch.utils.flop_counter import FlopCounterMode

    meta_model = deepcopy(model).to("meta") if next(model.parameters()).device.type != "meta" else model
    meta_inputs = [x.to("meta") if torch.is_tensor(x) else x for x in inputs]
    meta_kwargs = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in kwargs.items()}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(*meta_inputs, **meta_kwargs)
    return counter.get_total_flops()


__all__ = [
    "CLASSES",
    "PRESETS",
    "VAE3D",
    "DiT",
    "DiagonalGaussian",
    "UNet3D",
    "build_denoiser",
    "build_vae",
    "count_parameters",
    "forward_flops",
]
