"""A pretrained per-frame latent space: a tiny random diffusers AutoencoderKL saved here stands in for Stable
Diffusion's VAE (vae.diffusers), read from its folder, wrapped as a VAE export, trained on and served from."""

import shutil
from pathlib import Path

import pytest
import torch

from vdp_ray.config import ConfigError, load_config
from vdp_ray.models.frame_vae import FrameVAE

ROOT = Path(__file__).resolve().parents[2]


def tiny_autoencoder(folder: Path, blocks=(8, 16, 16), scaling=0.5) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=scaling,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    return tiny_autoencoder(tmp_path_factory.mktemp("sdvae") / "vae")


def test_the_autoencoder_folder_decides_the_latent_geometry(autoencoder):
    cfg = load_config(ROOT / "experiments" / "tiny_dit.yaml", [f"vae.diffusers={autoencoder}"])
    v = cfg.vae
    assert (v.latent_channels, v.spatial_compression, v.temporal_compression, v.scale_factor) == (4, 4, 1, 0.5)
    assert cfg.train.stages == ("dit",)  # tiny_dit.yaml lists [vae, dit]: the pretrained VAE is not trained


def test_frames_go_through_the_2d_autoencoder_one_by_one(autoencoder):
    vae = FrameVAE.from_folder(autoencoder, channels=1).eval()
    clips = torch.rand(2, 1, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        q = vae.encode(clips)
        z = q.mode()
        assert z.shape == (2, 4, 5, 8, 8)  # every frame its own latent frame
        assert torch.equal(q.mean, z) and q.std.shape == z.shape and (q.std > 0).all()  # what the latent cache keeps
        assert vae.decode(z).shape == (2, 1, 5, 32, 32)  # grey in, grey out (RGB inside)
        single = vae.encode(clips[:1, :, 3:4]).mode()
    assert torch.allclose(single[0, :, 0], z[0, :, 3], atol=1e-5)  # frames do not see each other


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["vae.diffusers=/nonexistent/vae"], "vae.diffusers: /nonexistent/vae: no config.json"),
        (["vae.export=/some/export"], "vae.diffusers and vae.export both set"),
    ],
)
def test_an_unusable_pretrained_vae_setting_is_refused_naming_the_key(autoencoder, overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "experiments" / "tiny_dit.yaml", [f"vae.diffusers={autoencoder}", *overrides])
    assert expected in str(err.value)


def test_an_autoencoder_that_compresses_2x_is_refused(tmp_path):
    folder = tiny_autoencoder(tmp_path / "vae2", blocks=(8, 16))
    with pytest.raises(ConfigError, match="compresses frames 2x"):
        load_config(ROOT / "experiments" / "tiny_dit.yaml", [f"vae.diffusers={folder}"])


@pytest.mark.train
def test_a_dit_trains_on_the_pretrained_latent_space_and_its_export_stands_alone(autoencoder, digits, tmp_path):
    from vdp_ray.export import Export
    from vdp_ray.predict import Predictor
    from vdp_ray.train import fit

    own = shutil.copytree(autoencoder, tmp_path / "sdvae")
    run = tmp_path / "run"
    cfg = load_config(
        ROOT / "experiments" / "tiny_dit.yaml",
        [
            f"data.train={digits / 'train'}",
            f"data.val={digits / 'val'}",
            f"run.dir={run}",
            "run.name=sdvae",
            f"vae.diffusers={own}",
            "train.workers=1",
            "train.cpus_per_worker=1",
            "train.batch_size=4",
            "train.max_steps=6",
            "train.log_every=3",
            "train.val_every=6",
            "train.checkpoint_every=6",
            "train.preview_every=6",
            "train.val_batches=1",
            "train.warmup_steps=1",
            "sampling.steps=2",
        ],
    )
    exports = fit(cfg)
    assert set(exports) == {"dit"}
    export = Export(exports["dit"])
    assert export.vae().meta["kind"] == "diffusers" and export.cfg.vae.scale_factor == 0.5
    shutil.rmtree(own)  # the export carries the autoencoder's weights and config
    p = Predictor.from_export(exports["dit"], device="cpu")
    assert p.temporal_compression == 1 and p.generate(steps=2, seed=0).shape == (8, 32, 32, 1)
    with torch.no_grad():  # the wrapped weights are the autoencoder's own
        ref = FrameVAE.from_folder(autoencoder, 1).eval().encode(torch.zeros(1, 1, 1, 32, 32)).mode()
        assert torch.allclose(p.vae.encode(torch.zeros(1, 1, 1, 32, 32)).mode(), ref, atol=1e-6)
