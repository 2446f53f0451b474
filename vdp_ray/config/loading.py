"""From files and command lines to plain values: YAML experiment files, ``key.sub=value`` overrides, the elastic
``train.workers: [min, max]`` shorthand, and the older names of keys that moved or are gone (``MOVED``,
``RETIRED``: so exports written before still load). ``normalise`` brings any plain values to today's layout;
``schema.Config.from_dict`` reads them. Nothing here knows the schema (it imports this module)."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from .fields import ConfigError

# Keys that moved to another section: old name -> new name. An export's config.yaml written before the move
# still loads; giving both names is an error.
MOVED = {
    "diffusion.sampler": "sampling.sampler",
    "diffusion.sample_steps": "sampling.steps",
    "diffusion.eta": "sampling.eta",
    "diffusion.spacing": "sampling.spacing",
    "diffusion.guidance": "sampling.guidance",
    "diffusion.clip_x0": "sampling.clip_x0",
    "text.guidance": "sampling.text_guidance",
}

# Keys that are gone: old name -> (its old default, why). A config written while they existed (every export's
# config.yaml holds them) still loads without them; a value other than the old default is named in a warning.
RETIRED = {
    "train.fault": ("none", "failure drills are not config keys any more (tests pass a train.faults.Drill to fit)"),
    "train.fault_step": (1, "failure drills are not config keys any more (tests pass a train.faults.Drill to fit)"),
}


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str) -> dict:
    """A YAML file holding a mapping; every failure raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        values = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise error(f"{path}: expected a mapping of keys at the top level, got {type(values).__name__}")
    return values


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last one silently, so a
    setting written twice in an experiment file would override the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} is given twice (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_value(raw: str):
    """A command-line value parsed as YAML (``[64, 64]``, ``true``, ``null``, ``1e-4``); kept as text when it is
    not YAML; empty = None."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def apply_override(values: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``[64, 64]``, ``true``, ``null``)."""
    key, sep, raw = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.lr=1e-4")
    set_key(values, key, parse_value(raw), what=f"override {item!r}")


def set_key(values: dict, key: str, value, what: str | None = None) -> None:
    """``values[a][b][c] = value`` for ``key`` 'a.b.c', creating sections on the way."""
    node = values
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what or key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def normalise(values: dict) -> dict:
    """Plain values in today's key layout: moved keys under their new names, retired keys dropped (or, for
    ``diffusion.residual``, read into the key that replaced it), the elastic shorthand expanded."""
    return _elastic_shorthand(_retired_residual(_retired_keys(_moved_keys(values))))


# ------------------------------------------------------------------------------------ internals
def _moved_keys(values: dict) -> dict:
    if not isinstance(values, dict):
        return values
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}  # a copy, one level deep
    for old, new in MOVED.items():
        old_section, old_key = old.split(".")
        section = out.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        new_section, new_key = new.split(".")
        target = out.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # the builder names the bad section
        if new_key in target:
            raise ConfigError(f"{old} and {new} both set: {old} is the older name of {new}; keep only {new}")
        target[new_key] = section.pop(old_key)
    return out


def _retired_residual(values: dict) -> dict:
    """``diffusion.residual`` (true/false), retired when the anchor became one key: false is ``diffusion.anchor:
    none``; true is the anchor as set (``last`` unless told). Exports written before it still load, with a warning
    that names both keys."""
    section = values.get("diffusion") if isinstance(values, dict) else None
    if not isinstance(section, dict) or "residual" not in section:
        return values
    section = dict(section)
    residual, anchor = section.pop("residual"), section.get("anchor")
    if not isinstance(residual, bool):
        raise ConfigError(
            f"diffusion.residual: expected true or false, got {residual!r} (an older key: use "
            "diffusion.anchor: none, last or motion)"
        )
    if (residual and anchor == "none") or (not residual and (anchor == "motion" or section.get("motion_kernel"))):
        raise ConfigError(
            f"diffusion.residual: {str(residual).lower()} contradicts diffusion.anchor / "
            "diffusion.motion_kernel: diffusion.residual is the older form of diffusion.anchor "
            "(false = none); keep only diffusion.anchor"
        )
    if not residual:
        section["anchor"] = "none"
    logging.getLogger("vdp_ray.config").warning(
        "diffusion.residual: %s is an older key, read as diffusion.anchor: %s; write that instead",
        str(residual).lower(),
        section.get("anchor", "last"),
    )
    return {**values, "diffusion": section}


def _retired_keys(values: dict) -> dict:
    """``values`` without the RETIRED keys (a copy where there were any); a setting that mattered is named."""
    for key, (old_default, why) in RETIRED.items():
        section_name, name = key.split(".")
        section = values.get(section_name) if isinstance(values, dict) else None
        if not isinstance(section, dict) or name not in section:
            continue
        values = {**values, section_name: {k: v for k, v in section.items() if k != name}}
        if section[name] != old_default:
            logging.getLogger("vdp_ray.config").warning("%s: %r is ignored: %s", key, section[name], why)
    return values


def _elastic_shorthand(values: dict) -> dict:
    """train.workers: [min, max] (Ray Train's elastic range) means train.min_workers=min, train.workers=max."""
    train = values.get("train") if isinstance(values, dict) else None
    if not isinstance(train, dict) or not isinstance(train.get("workers"), (list, tuple)):
        return values
    span = train["workers"]
    if len(span) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in span):
        raise ConfigError(f"train.workers: expected a worker count or an elastic range [min, max], got {span!r}")
    if span[0] > span[1]:
        raise ConfigError(f"train.workers: an elastic range is [min, max] with min <= max, got {span!r}")
    if train.get("min_workers") is not None:
        raise ConfigError("train.workers is an elastic range [min, max]: leave train.min_workers unset")
    return {**values, "train": {**train, "workers": span[1], "min_workers": span[0]}}
