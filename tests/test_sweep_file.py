"""Sweep files (issue 6, first part): every mistake refused before any trial, naming the key."""

import pytest
import yaml

from vdp_ray.tune import SweepError, load_sweep


def write(tmp_path, repo_root, **fields):
    doc = {
        "base": str(repo_root / "experiments" / "tiny_unet.yaml"),
        "metric": "val/loss",
        "space": {"diffusion.prediction_type": {"choice": ["eps", "v", "x0"]}},
        **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_good_sweep_loads_and_builds_trial_configs(tmp_path, repo_root):
    path = write(
        tmp_path,
        repo_root,
        space={"diffusion.schedule": {"choice": ["linear", "cosine"]}, "train.lr": {"loguniform": [1e-4, 1e-3]}},
        overrides={"train.max_steps": 50},
        metric="val/psnr_gain",
    )
    sweep = load_sweep(path, ["train.batch_size=2"])
    assert sweep.mode == "max" and sweep.metric == "val/psnr_gain"
    cfg = sweep.config_for({"diffusion.schedule": "linear", "train.lr": 3e-4})
    assert cfg.diffusion.schedule == "linear" and cfg.train.lr == 3e-4
    assert cfg.train.max_steps == 50 and cfg.train.batch_size == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"space": {"train.lrr": {"choice": [1e-3]}}}, "space.train.lrr = 0.001: unknown key 'train.lrr'"),
        (
            {"space": {"diffusion.prediction_type": {"choice": ["eps", "flow"]}}},
            "space.diffusion.prediction_type = 'flow'",
        ),
        ({"space": {}}, "space: empty"),
        ({"metric": "val/fid"}, "metric: 'val/fid' is never reported"),
        ({"space": {"train.lr": {"loguniform": [0, 1e-3]}}}, "space.train.lr: loguniform needs 0 < low < high"),
        ({"space": {"train.lr": {"normal": [0, 1]}}}, "space.train.lr: expected one of"),
        ({"scheduler": {"pbt": {}}}, "scheduler: expected one of ['asha', 'fifo']"),
        ({"num_samples": 0}, "num_samples: expected a positive integer"),
        ({"base": "nope.yaml"}, "base: config file not found: nope.yaml"),
        ({"bogus": 1}, "unknown key(s) ['bogus']"),
        ({"dir": "gs://bucket/sweeps/a"}, "dir: gs://bucket/sweeps/a is a gs:// URI"),
        ({"overrides": {"data.val": None}, "metric": "val/psnr"}, "needs validation shards (data.val)"),
    ],
)
def test_mistakes_are_refused_naming_the_key(tmp_path, repo_root, fields, message):
    with pytest.raises(SweepError) as exc:
        load_sweep(write(tmp_path, repo_root, **fields))
    assert message in str(exc.value)


def test_every_shipped_sweep_file_is_valid(repo_root):
    files = sorted((repo_root / "experiments").glob("sweep_*.yaml"))
    assert files
    for path in files:
        assert load_sweep(path).space


def test_shipped_sweep_is_valid_and_becomes_a_grid(repo_root):
    sweep = load_sweep(repo_root / "experiments" / "sweep_schedule_prediction.yaml")
    assert sweep.base == repo_root / "experiments" / "tiny_unet.yaml"
    from vdp_ray.tune import param_space

    space = param_space(sweep)
    assert space["diffusion.schedule"] == {"grid_search": ["linear", "cosine"]}
    assert space["diffusion.prediction_type"] == {"grid_search": ["eps", "v", "x0"]}
