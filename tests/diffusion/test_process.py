"""A diffusion process takes the config's diffusion keys, with the config's defaults and checks: one built by hand
is the one a config builds."""

import dataclasses

import pytest

from vdp_ray.config import ConfigError, DiffusionConfig, load_config
from vdp_ray.diffusion import FlowMatching, GaussianDiffusion, make_diffusion


@pytest.mark.parametrize(("cls", "objective"), [(GaussianDiffusion, "ddpm"), (FlowMatching, "flow")])
def test_a_process_built_by_hand_is_the_one_the_config_builds(cls, objective):
    by_hand = cls(prediction_type="x0", anchor="motion", motion_kernel=5)
    cfg = load_config(
        None,
        [
            f"diffusion.objective={objective}",
            "diffusion.prediction_type=x0",
            "diffusion.anchor=motion",
            "diffusion.motion_kernel=5",
        ],
    )
    from_config = make_diffusion(cfg.diffusion)
    assert type(from_config) is cls
    assert by_hand.cfg == dataclasses.replace(cfg.diffusion, masks=DiffusionConfig().masks)
    assert by_hand.anchor == from_config.anchor and by_hand.times == from_config.times
    assert cls().cfg == dataclasses.replace(DiffusionConfig(), objective=objective)  # the schema's defaults


def test_a_process_checks_its_settings_as_the_config_does():
    with pytest.raises(ConfigError, match=r"diffusion\.context_noise: 2"):
        GaussianDiffusion(context_noise=2.0)
    with pytest.raises(ConfigError, match=r"unknown key 'diffusion\.shift' \(did you mean 'diffusion\.flow_shift'\?\)"):
        FlowMatching(shift=2.0)
    with pytest.raises(ValueError, match="FlowMatching is 'flow'"):
        FlowMatching(objective="ddpm")
