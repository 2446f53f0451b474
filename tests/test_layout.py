"""Architecture rules that keep the package readable: models know nothing of diffusion, diffusion nothing
of models or Ray, and importing the package has no side effects."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.models import build_denoiser, build_vae


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_models_never_import_diffusion_or_ray():
    mods = imported_after("import vdp_ray.models")
    assert "vdp_ray.diffusion" not in mods and "ray" not in mods


def test_diffusion_never_imports_models_or_ray():
    mods = imported_after("import vdp_ray.diffusion")
    assert "vdp_ray.models" not in mods and "ray" not in mods and "deepspeed" not in mods


def test_the_anchor_knows_neither_models_nor_diffusion():
    mods = imported_after("import vdp_ray.anchor")
    assert "vdp_ray.models" not in mods and "vdp_ray.diffusion" not in mods and "ray" not in mods


def test_importing_the_package_is_cheap():
    mods = imported_after("import vdp_ray, vdp_ray.config")
    assert "torch" not in mods and "ray" not in mods


@pytest.mark.parametrize("name", ["tiny_unet", "tiny_dit", "demo"])
def test_tiny_experiments_build_and_run(repo_root, name):
    cfg = load_config(repo_root / "experiments" / f"{name}.yaml")
    c, t, (h, w) = cfg.data.channels, cfg.data.frames, cfg.data.size
    x = torch.randn(2, c, t, h, w)
    if cfg.model.family == "dit":
        vae = build_vae(cfg)
        recon, post = vae(x)
        assert recon.shape == x.shape
        x = post.sample()
    out = build_denoiser(cfg)(x, torch.full((2,), 10.0), None)
    k = cfg.diffusion.motion_kernel  # a motion model also outputs K^2 weights per pixel
    assert out.shape == (x.shape[0], x.shape[1] + k * k, *x.shape[2:])


@pytest.mark.parametrize("name", ["seed_unet", "seed_dit"])
def test_seed_experiments_build_at_full_size(repo_root, name):
    cfg = load_config(repo_root / "experiments" / f"{name}.yaml")
    with torch.device("meta"):
        model = build_denoiser(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 50e6


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_samplers_drive_a_real_model_with_context_and_guidance(repo_root, sampler):
    from dataclasses import replace

    from vdp_ray.diffusion import Condition, GaussianDiffusion, prediction_mask, sample

    cfg = load_config(repo_root / "experiments" / "tiny_unet.yaml")
    model = build_denoiser(cfg).eval()
    with torch.no_grad():  # leave the zero-init so the output is informative: random final conv
        model.conv_out.weight.normal_(0, 0.02)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    c, t, (h, w) = cfg.data.channels, cfg.data.frames, cfg.data.size
    context = torch.rand(2, c, t, h, w) * 2 - 1
    mask = prediction_mask(2, t, cfg.data.context_frames)
    settings = replace(cfg.sampling, sampler=sampler, steps=3, guidance=2.0)
    out = sample(
        model, diffusion, context.shape, Condition(context, mask), settings, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == context.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    k = cfg.data.context_frames
    assert torch.equal(out[:, :, :k], context[:, :, :k])
    assert out[:, :, k:].abs().max() <= 1.0 + 1e-6, "the last step returns the clipped x0 estimate"


PACKAGE = Path(__file__).resolve().parents[1] / "vdp_ray"
MAX_MODULE_LINES = 400


def test_no_package_module_grows_past_its_limit():
    """Modules split where they have seams (docs/ARCHITECTURE.md): none above MAX_MODULE_LINES lines."""
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {k: v for k, v in sizes.items() if v > MAX_MODULE_LINES}


def test_the_package_has_no_import_cycles():
    """Imports between vdp_ray modules form no cycle, counting those inside functions too: a lazy import only
    defers a cycle (the package root lazily imported the Predictor, whose data modules took the version from the
    root; config's loading and schema imported each other). The version lives in vdp_ray/version.py, which
    imports nothing."""
    import ast

    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):  # every import, at the top or in a function
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    target = ".".join([*base[: len(base) - node.level + 1], *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                for alias in node.names:  # a submodule, or a name the target module defines
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
    for name in graph:
        graph[name] = {d for d in graph[name] if d in modules and d != name}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return [*path, start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, cycles[0]
    assert graph["vdp_ray.version"] == set() and "vdp_ray.version" in graph["vdp_ray.data.shards"]


def test_every_vocabulary_is_defined_once():
    """vocab.py is the one place a vocabulary lives: no other module assigns a name it defines."""
    import ast

    from vdp_ray import vocab

    names = {n for n in dir(vocab) if n.isupper()}
    redefined = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "vocab.py":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            redefined += [f"{path.name}: {t.id}" for t in targets if isinstance(t, ast.Name) and t.id in names]
    assert not redefined
    from vdp_ray.train.stages import STAGE_CLASSES

    assert set(STAGE_CLASSES) == set(vocab.STAGES), "every stage name has its class, and only those"
