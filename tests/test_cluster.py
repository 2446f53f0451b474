"""cluster/: every manifest parses; the launcher config validates against the schema inside the Ray wheel;
images, Ray versions and entrypoints agree with pyproject.toml, constraints.txt and the CLI; the Serve
application is the same in every place it is declared; the GPU DeepSpeed config is what a GPU run needs."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from vdp_ray.cli import build_parser
from vdp_ray.config import load_config
from vdp_ray.train.engine import deepspeed_config, stage_settings

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
MANIFESTS = sorted(CLUSTER.rglob("*.yaml"))


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_manifest_parses():
    assert {p.name for p in MANIFESTS} >= {
        "aws-gpu.yaml",
        "runtime_env.yaml",
        "serve.yaml",
        "raycluster.yaml",
        "rayjob-train.yaml",
        "rayjob-tune.yaml",
        "rayservice-serve.yaml",
    }
    for path in MANIFESTS:
        assert isinstance(load(path), dict), path


def test_launcher_config_validates_against_the_ray_wheel_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = load(CLUSTER / "aws-gpu.yaml")
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t.get("max_workers", 0) > t.get("min_workers", 0) for t in types.values())  # it scales
    bad = {**config, "available_node_types": {"head": {"node_config": {}, "resources": {}, "max_workers": "many"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_images_and_ray_versions_agree():
    ray_version = pinned("ray")
    assert ray_version.startswith("2.60")
    docker = (CLUSTER / "Dockerfile").read_text()
    # the package with its declared dependencies at the pins, never --no-deps beside a hand-written list
    assert re.search(r"^RUN pip install -c constraints\.txt \.(\s|$)", docker, re.M) and "--no-deps" not in docker
    assert "COPY pyproject.toml constraints.txt" in docker and "python cluster/check_image.py" in docker
    # a CUDA base (with g++/nvcc for DeepSpeed's ops) of the CUDA the pinned torch is built for
    import torch

    base = re.search(r"^FROM nvidia/cuda:(\d+\.\d+)\.\d+-cudnn-devel-\S+$", docker, re.M)
    assert base and pinned("torch") == torch.__version__.split("+")[0]
    if torch.version.cuda:  # this checkout's torch is the pinned wheel, a CUDA build
        assert torch.version.cuda.startswith(base.group(1)), (torch.version.cuda, base.group(1))
    images = set(re.findall(r"image: (\S+)", "\n".join(p.read_text() for p in MANIFESTS)))
    assert len(images) == 1, images  # one image everywhere
    for path in (CLUSTER / "kuberay").glob("*.yaml"):
        text = path.read_text()
        assert re.search(rf"rayVersion: \"?{re.escape(ray_version)}\"?", text), path
        assert "apiVersion: ray.io/v1" in text, path


def test_the_image_check_finds_every_declared_dependency_here_and_a_wrong_cuda():
    """cluster/check_image.py, the image's last build step, on this environment (installed from pyproject.toml
    the same way): nothing missing; and it refuses a torch built for another CUDA."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_image", CLUSTER / "check_image.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.problems() == []
    assert any("built for CUDA" in p for p in check.problems(cuda="9.9"))


def test_job_entrypoints_are_real_commands_on_real_configs():
    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    for name in ("rayjob-train.yaml", "rayjob-tune.yaml"):
        entry = shlex.split(load(CLUSTER / "kuberay" / name)["spec"]["entrypoint"])
        assert entry[0] == "vdp" and entry[1] in verbs, entry
        target = ROOT / entry[2]
        assert target.is_file(), target
        overrides = [a for a in entry[3:] if "=" in a and not a.startswith(("data.train", "data.val"))]
        if entry[1] == "train":
            cfg = load_config(target, overrides)
            assert cfg.train.use_gpu == "true" and cfg.train.precision == "fp16"
        else:
            from vdp_ray.tune import load_sweep

            assert load_sweep(target).max_concurrent_trials >= 1
    env = load(CLUSTER / "runtime_env.yaml")
    assert env["working_dir"] == "." and ".venv/" in env["excludes"]


def test_the_serve_application_is_the_same_everywhere():
    from ray.serve.schema import ServeDeploySchema

    serve_file = load(CLUSTER / "serve.yaml")
    inline = yaml.safe_load(load(CLUSTER / "kuberay" / "rayservice-serve.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(inline)
    assert inline["applications"] == serve_file["applications"]
    assert inline["applications"][0]["args"]["gpus_per_replica"] >= 1


def test_gpu_deepspeed_config_from_the_seed_config():
    """What `vdp train experiments/seed_dit.yaml` hands DeepSpeed on 8 GPUs: fp16 with dynamic loss scaling,
    ZeRO-2 with its buckets, clipping, and a batch that adds up."""
    cfg = load_config(ROOT / "experiments" / "seed_dit.yaml", ["train.grad_accum=2"])
    world = cfg.train.workers
    ds = deepspeed_config(cfg, "dit", world, "fp16")
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0  # 0 = dynamic
    assert ds["fp16"]["initial_scale_power"] >= 8 and ds["fp16"]["hysteresis"] >= 1
    zero = ds["zero_optimization"]
    assert zero["stage"] == cfg.train.zero_stage == 2 and zero["overlap_comm"] and zero["contiguous_gradients"]
    assert zero["reduce_bucket_size"] >= 1e7 and zero["allgather_bucket_size"] >= 1e7
    assert not deepspeed_config(cfg, "dit", world, "fp32")["zero_optimization"]["overlap_comm"]  # CPU fallback
    assert ds["gradient_clipping"] == cfg.train.grad_clip > 0
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
    assert ds["train_micro_batch_size_per_gpu"] == cfg.train.batch_size and ds["gradient_accumulation_steps"] == 2
    assert "bf16" not in ds and ds["optimizer"]["params"]["lr"] == cfg.train.lr
    # the VAE stage's own steps end its learning-rate schedule (the loop's, engine.lr_ratio)
    assert stage_settings(cfg, "vae").max_steps == (cfg.vae.max_steps or cfg.train.max_steps)
    own_batch = load_config(ROOT / "experiments" / "seed_dit.yaml", ["vae.batch_size=3"])
    own = deepspeed_config(own_batch, "vae", world, "fp16")
    assert own["train_micro_batch_size_per_gpu"] == 3 and own["train_batch_size"] == 3 * world  # the VAE's own batch


def test_gpu_check_says_in_one_line_that_there_is_no_gpu_and_exits_2():
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: `make gpu-check` runs for real here")
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench" / "gpu_check.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout.strip().count("\n") == 0 and "no CUDA GPU" in done.stdout
