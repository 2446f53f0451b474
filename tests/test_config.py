import dataclasses
from pathlib import Path

import pytest
import yaml

from vdp_ray.config import Config, ConfigError, apply_override, describe_keys, load_config

# experiment configs; sweep_*.yaml are sweep files (tests/test_sweep_file.py checks those)
EXPERIMENTS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml") if not p.name.startswith("sweep_")
)


def test_experiments_exist():
    names = {p.name for p in EXPERIMENTS}
    assert {"tiny_unet.yaml", "tiny_vae.yaml", "tiny_dit.yaml", "seed_unet.yaml", "seed_dit.yaml"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_loads_and_round_trips(path):
    cfg = load_config(path)
    again = Config.from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_seed_sizes_match_the_reference():
    dit = load_config(Path(EXPERIMENTS[0]).parent / "seed_dit.yaml")
    assert (dit.model.dit.hidden, dit.model.dit.depth, dit.model.dit.heads, dit.model.dit.patch) == (768, 12, 12, 2)
    assert (dit.data.frames, tuple(dit.data.size)) == (16, (256, 256))
    assert (dit.vae.spatial_compression, dit.vae.temporal_compression, dit.vae.latent_channels) == (8, 4, 4)
    unet = load_config(Path(EXPERIMENTS[0]).parent / "seed_unet.yaml")
    assert (unet.model.unet3d.base_channels, unet.model.unet3d.channel_mults) == (64, (1, 2, 4, 8))


def test_overrides_are_typed(tmp_path):
    cfg = load_config(
        None,
        [
            "train.lr=1e-4",
            "train.workers=2",
            "run.dir=runs/a",
            "data.size=[32, 48]",
            "diffusion.min_snr_gamma=5",
            "model.dit.qk_norm=true",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.workers == 2 and cfg.run.dir == "runs/a"
    assert cfg.data.size == (32, 48)
    assert cfg.diffusion.min_snr_gamma == 5.0
    assert cfg.model.dit.qk_norm is True


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(
        None,
        [
            "train.lr=3e-4",
            "model.family=dit",
            "diffusion.masks.context_min=2",
            "diffusion.masks.context_max=4",
            "data.context_frames=4",
        ],
    )
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_presets_fill_unset_fields_and_explicit_values_win():
    cfg = load_config(
        None,
        [
            "model.family=dit",
            "model.preset=S",
            "model.dit.depth=3",
            "diffusion.masks.context_min=2",
            "diffusion.masks.context_max=4",
            "data.context_frames=4",
        ],
    )
    assert cfg.model.dit.hidden == 384 and cfg.model.dit.heads == 6
    assert cfg.model.dit.depth == 3
    assert cfg.train.stages == ("vae", "dit")  # no VAE export given: train one first


def test_a_config_is_frozen_and_derived_configs_are_validated_again():
    cfg = load_config(None, ["train.lr=3e-4"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    more = cfg.updated({"train.lr": 1e-3, "sampling.steps": 7})
    assert (more.train.lr, more.sampling.steps, cfg.train.lr) == (1e-3, 7, 3e-4)
    assert more.trained_part() == cfg.trained_part(), "training and sampling settings are not the trained model"
    assert cfg.updated({"diffusion.prediction_type": "x0"}).trained_part() != cfg.trained_part()
    with pytest.raises(ConfigError, match=r"sampling\.steps: 0 is out of range"):
        cfg.updated({"sampling.steps": 0})


def test_sampling_keys_of_older_exports_still_load_under_their_new_names(tmp_path):
    old = tmp_path / "config.yaml"  # an export's config.yaml from before the sampling section existed
    old.write_text(
        "diffusion: {sampler: dpm++, sample_steps: 12, guidance: 1.5, eta: 0.2, clip_x0: null}\ntext: {guidance: 3.0}\n"
    )
    cfg = load_config(old)
    s = cfg.sampling
    assert (s.sampler, s.steps, s.guidance, s.eta, s.clip_x0, s.text_guidance) == ("dpm++", 12, 1.5, 0.2, None, 3.0)
    assert "sample_steps" not in cfg.to_yaml() and "steps: 12" in cfg.to_yaml()
    assert load_config(None, ["diffusion.sample_steps=9"]).sampling.steps == 9  # an old override, too
    with pytest.raises(ConfigError, match=r"diffusion\.sample_steps and sampling\.steps both set"):
        load_config(None, ["diffusion.sample_steps=9", "sampling.steps=3"])


def test_failure_drills_are_no_config_keys_and_older_configs_holding_them_still_load(tmp_path, caplog):
    """Drills are the tests' (train.faults.Drill passed to fit): not in `vdp keys`, a saved config or the schema.
    Every export's config.yaml written before holds train.fault / fault_step: they are dropped on loading, and a
    drill that was set is named in a warning rather than silently run or refused."""
    assert not [row[0] for row in describe_keys("train.") if "fault" in row[0]]
    assert "fault" not in load_config(None).to_yaml()
    old = tmp_path / "config.yaml"
    old.write_text("train: {lr: 0.002, fault: none, fault_step: 1}\n")  # an export's, with the old defaults
    with caplog.at_level("WARNING", logger="vdp_ray.config"):
        cfg = load_config(old)
    assert cfg.train.lr == 0.002 and "fault" not in cfg.to_yaml() and not caplog.records
    old.write_text("train: {fault: kill, fault_step: 16}\n")
    with caplog.at_level("WARNING", logger="vdp_ray.config"):
        assert load_config(old).to_dict() == load_config(None).to_dict()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["train.fault", "train.fault_step"]
    assert "'kill' is ignored" in caplog.records[0].getMessage()


def test_a_requests_sampling_settings_are_checked_once_naming_the_setting():
    from vdp_ray.config import SamplingConfig, SettingError, check_prompts, resolve_sampling

    base = SamplingConfig(steps=20)
    assert resolve_sampling(base, 1000, steps=5, guidance=None).steps == 5
    assert resolve_sampling(base, 1000, guidance=2).guidance == 2.0
    for changes, field, words in [
        ({"steps": 0}, "steps", "[1, 1000]"),
        ({"steps": 1001}, "steps", "got 1001"),
        ({"sampler": "lms"}, "sampler", "unknown 'lms'"),
        ({"guidance": 51}, "guidance", "[0, 50]"),
        ({"eta": 2}, "eta", "[0, 1]"),
        ({"text_guidance": -1}, "text_guidance", "[0, 50]"),
        ({"strength": 1}, "strength", "not a sampling setting"),
    ]:
        with pytest.raises(SettingError) as err:
            resolve_sampling(base, 1000, **changes)
        assert err.value.field == field and words in err.value.message, (changes, err.value)
    assert check_prompts(True, "a 3", None, 2) == ["a 3", "a 3"] and check_prompts(False, None, None, 2) is None
    for args, field in [
        ((False, "a 3", None, 1), "prompt"),
        ((False, None, 2.0, 1), "text_guidance"),
        ((True, ["a", "b"], None, 3), "prompt"),
        ((True, "x" * 2001, None, 1), "prompt"),
    ]:
        with pytest.raises(SettingError) as err:
            check_prompts(*args)
        assert err.value.field == field


def test_an_elastic_worker_range_sets_min_and_max_workers():
    cfg = load_config(None, ["train.workers=[1, 4]"])
    assert (cfg.train.min_workers, cfg.train.workers) == (1, 4)
    assert Config.from_dict(cfg.to_dict()).train.min_workers == 1  # round-trips as the two keys


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.lrr=1e-4"], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        (["trian.lr=1e-4"], "unknown key 'trian' (did you mean 'train'?)"),
        (["train.lr=-1"], "train.lr: -1.0 is out of range; expected > 0.0 and <= 1.0"),
        (["train.workers=0"], "train.workers: 0 is out of range"),
        (["train.workers=1.5"], "train.workers: expected an integer, got 1.5"),
        (["train.workers=[1, 2, 3]"], "train.workers: expected a worker count or an elastic range [min, max]"),
        (["train.workers=[2, 1]"], "an elastic range is [min, max] with min <= max, got [2, 1]"),
        (["train.workers=[1, 2]", "train.min_workers=1"], "leave train.min_workers unset"),
        (["train.lr=fast"], "train.lr: expected a number, got 'fast'"),
        (
            ["diffusion.schedule=quadratic"],
            "diffusion.schedule: 'quadratic' is not allowed; expected one of ['linear', 'cosine', 'sigmoid']",
        ),
        (["diffusion.prediction_type=score"], "expected one of ['eps', 'v', 'x0']"),
        (["train.precision=fp8"], "train.precision: 'fp8' is not allowed"),
        (["train.zero_stage=4"], "train.zero_stage: 4 is not allowed; expected one of [0, 1, 2, 3]"),
        (["data.size=[64]"], "data.size: expected a list of 2 values"),
        (["data.size=[62, 64]"], "data.size 62x64 must be divisible by the U-Net's downsampling"),
        (["data.channels=2"], "data.channels: 2 is not allowed; expected one of [1, 3]"),
        (["model.preset=huge"], "model.preset: unknown unet3d preset 'huge'"),
        (
            ["diffusion.prediction_type=eps", "diffusion.zero_terminal_snr=true", "diffusion.anchor=none"],
            "diffusion.zero_terminal_snr: needs diffusion.prediction_type v or x0",
        ),
        (
            ["diffusion.objective=flow", "diffusion.prediction_type=eps", "diffusion.anchor=none"],
            "diffusion.prediction_type: eps cannot be sampled under diffusion.objective flow",
        ),
        (["diffusion.objective=rf"], "diffusion.objective: 'rf' is not allowed"),
        (["diffusion.motion_kernel=4"], "diffusion.motion_kernel must be 0 or odd (3, 5, 7, ...), got 4"),
        (["diffusion.motion_kernel=3", "diffusion.anchor=none"], "diffusion.motion_kernel needs an anchor to move"),
        (["diffusion.anchor=motion"], "diffusion.anchor: motion needs motion kernels"),
        (["diffusion.motion_kernel=3", "diffusion.residual=false"], "diffusion.residual is the older form of"),
        (["diffusion.residual=maybe"], "diffusion.residual: expected true or false"),
        (["train.select_by=val/psnr"], "train.select_by: 'val/psnr' is not allowed"),
        (["diffusion.masks.context_max=16"], "diffusion.masks.context_max (16) must be < data.frames (16)"),
        (
            ["diffusion.masks.context_min=6", "diffusion.masks.context_max=5"],
            "context_min (6) must be <= context_max (5)",
        ),
        (
            ["diffusion.masks.prediction=0", "diffusion.masks.generation=0", "diffusion.masks.interpolation=0"],
            "task probabilities",
        ),
        (["model.family=dit"], "diffusion.masks.context_min (1) must be a multiple of vae.temporal_compression (2)"),
        (["model.family=dit", "data.frames=9"], "data.frames (9) must be divisible by vae.temporal_compression (2)"),
        (
            [
                "model.family=dit",
                "model.preset=S",
                "model.dit.heads=5",
                "diffusion.masks.context_min=2",
                "diffusion.masks.context_max=4",
                "data.context_frames=4",
            ],
            "model.dit.hidden (384) must be divisible by model.dit.heads (5)",
        ),
        (
            [
                "model.family=dit",
                "vae.spatial_compression=8",
                "diffusion.masks.context_min=2",
                "diffusion.masks.context_max=4",
                "data.context_frames=4",
            ],
            "vae.channel_mults needs 4 entries for vae.spatial_compression=8",
        ),
        (["train.stages=[dit]"], "the 'dit' stage needs model.family: dit"),
        (["train.stages=[gan]"], "train.stages: unknown stage 'gan'"),
        (["model.unet3d.attn_levels=[5]"], "model.unet3d.attn_levels [5] out of range"),
        (["train"], "expected key.path=value"),
        (["train=3"], "train: expected a mapping of keys"),
    ],
)
def test_bad_values_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: unknown key 'train.epochs'"):
        load_config(wrong)


def test_a_key_given_twice_in_a_file_is_an_error_naming_both_lines(tmp_path):
    twice = tmp_path / "twice.yaml"  # YAML itself keeps the last value silently
    twice.write_text("diffusion:\n  anchor: motion\n  motion_kernel: 5\n  anchor: last\n")
    given_twice = r"(?s)twice\.yaml: not valid YAML.*'anchor' is given twice \(first on line 2\).*line 4"
    with pytest.raises(ConfigError, match=given_twice):
        load_config(twice)
    same_key_elsewhere = tmp_path / "ok.yaml"  # the same name in two sections is fine
    same_key_elsewhere.write_text("train:\n  lr: 0.1\nvae:\n  lr: 0.2\n")
    assert load_config(same_key_elsewhere).vae.lr == 0.2


def test_override_helper_builds_nested_sections():
    values = {}
    apply_override(values, "diffusion.masks.context_drop=0.2")
    apply_override(values, "run.name=abc")
    assert values == {"diffusion": {"masks": {"context_drop": 0.2}}, "run": {"name": "abc"}}


def test_describe_keys_covers_every_leaf():
    keys = {row[0] for row in describe_keys()}
    assert "train.lr" in keys and "diffusion.masks.context_drop" in keys and "model.dit.qk_norm" in keys

    def leaves(cls, prefix=""):
        out = set()
        for f in dataclasses.fields(cls):
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(sub):
                out |= leaves(type(sub), prefix + f.name + ".")
            else:
                out.add(prefix + f.name)
        return out

    assert keys == leaves(Config)
    assert all(row[3] for row in describe_keys()), "every key has help text"


def test_a_storage_uri_for_run_dir_is_refused_before_any_work():
    """run.dir is written with local file APIs on every node: an s3:// path would become a local folder named
    's3:' on each of them. A file:// URI is refused too, with the path to write instead."""
    with pytest.raises(ConfigError, match=r"run\.dir: s3://bucket/runs/a is a s3:// URI, .* mountpoint-s3"):
        load_config(None, ["run.dir=s3://bucket/runs/a"])
    with pytest.raises(ConfigError, match=r"write the path itself \(/tmp/runs/a\)"):
        load_config(None, ["run.dir=file:///tmp/runs/a"])
    assert load_config(None, ["run.dir=/mnt/shared/runs/a"]).run.dir == "/mnt/shared/runs/a"


def test_the_retired_residual_key_loads_as_the_anchor_it_meant_and_says_so(tmp_path, caplog):
    old = tmp_path / "old.yaml"  # an export's config.yaml from before diffusion.anchor took none
    old.write_text("diffusion:\n  residual: false\n  prediction_type: v\n")
    with caplog.at_level("WARNING", logger="vdp_ray.config"):
        assert load_config(old).diffusion.anchor == "none"
        old.write_text("diffusion:\n  residual: true\n  anchor: motion\n  motion_kernel: 5\n")
        cfg = load_config(old)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("diffusion.residual: false is an older key, read as diffusion.anchor: none")
    assert messages[1].startswith("diffusion.residual: true is an older key, read as diffusion.anchor: motion")
    assert (cfg.diffusion.anchor, cfg.diffusion.motion_kernel) == ("motion", 5)
    with pytest.raises(ConfigError, match=r"diffusion\.residual: true contradicts"):
        load_config(None, ["diffusion.residual=true", "diffusion.anchor=none"])
