"""One typed config tree for every command: frozen dataclasses loaded from YAML, dotted overrides, validated once.

    cfg = load_config("experiments/tiny_unet.yaml", ["train.lr=1e-4"])   # ConfigError names any bad key
    cfg.train.lr                                                          # typed, frozen
    cfg.updated({"vae.export": "runs/vae/export"})                        # a derived config, validated again

``schema`` holds the sections and ``load_config`` (``diffusion`` the diffusion section), ``checks`` the relations
between the sections, ``sampling`` the sampling section and the check of a request's sampling settings,
``loading`` files and overrides as plain values (and the older names of keys), ``fields`` the typed machinery.
"""

from .diffusion import DiffusionConfig, MaskConfig
from .fields import ConfigError, opt, section
from .loading import MOVED, RETIRED, apply_override, parse_value, read_yaml_mapping, set_key
from .sampling import SamplingConfig, SettingError, check_prompts, check_sampling, resolve_sampling
from .schema import (
    Config,
    DataConfig,
    DiTConfig,
    ModelConfig,
    RunConfig,
    TextConfig,
    TrainConfig,
    UNetConfig,
    VAEConfig,
    describe_keys,
    load_config,
)

__all__ = [
    "MOVED",
    "RETIRED",
    "Config",
    "ConfigError",
    "DataConfig",
    "DiTConfig",
    "DiffusionConfig",
    "MaskConfig",
    "ModelConfig",
    "RunConfig",
    "SamplingConfig",
    "SettingError",
    "TextConfig",
    "TrainConfig",
    "UNetConfig",
    "VAEConfig",
    "apply_override",
    "check_prompts",
    "check_sampling",
    "describe_keys",
    "load_config",
    "opt",
    "parse_value",
    "read_yaml_mapping",
    "resolve_sampling",
    "section",
    "set_key",
]
