"""One typed config tree for every command: frozen dataclasses loaded from YAML, dotted overrides, validated once.

    cfg = load_config("experiments/tiny_unet.yaml", ["train.lr=1e-4"])   # ConfigError names any bad key
    cfg.train.lr                                                          # typed, frozen
    cfg.updated({"vae.export": "runs/vae/export"})                        # a derived config, validated again

``schema`` holds the sections, ``checks`` the relations between them, ``sampling`` the sampling section and the
check of a request's sampling settings, ``loading`` files and overrides, ``fields`` the typed machinery.
"""

from .fields import ConfigError, opt, section
from .loading import MOVED, apply_override, describe_keys, load_config, parse_value, read_yaml_mapping, set_key
from .sampling import SamplingConfig, SettingError, check_prompts, check_sampling, resolve_sampling
from .schema import (
    Config,
    DataConfig,
    DiffusionConfig,
    DiTConfig,
    MaskConfig,
    ModelConfig,
    RunConfig,
    TextConfig,
    TrainConfig,
    UNetConfig,
    VAEConfig,
)

__all__ = [
    "MOVED",
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
