"""`vdp encode`: clip shards -> latent shards of a VAE export (Ray Data, an encoder actor pool), refused by a run
of another VAE or geometry. A DiT trained from them: tests/text/test_text_training.py (the text DiT)."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from support.runs import ROOT

from vdp_ray.config import ConfigError, load_config
from vdp_ray.data.latent_format import vae_id
from vdp_ray.data.latent_shards import EncodeOptions, encode_latents
from vdp_ray.export import Export, write_export
from vdp_ray.models import build_vae
from vdp_ray.options import OptionError


def vae_export(folder, seed: int = 0):
    """A VAE export at tiny_dit's geometry with fresh weights (encoding needs no trained VAE)."""
    torch.manual_seed(seed)
    cfg = load_config(ROOT / "experiments" / "tiny_dit.yaml", ["vae.scale_factor=0.5"])
    return write_export(folder, cfg, "vae", build_vae(cfg).state_dict(), {"steps": 0})


@pytest.fixture(scope="module")
def latents(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    vae = vae_export(root / "vae")
    encode_latents(
        EncodeOptions(shards=str(digits), vae=str(vae), out=str(root / "out"), batch_size=8), log=lambda *_: None
    )
    return root / "out", vae


def read_members(split):
    out = {}
    for shard in sorted(split.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                out[m.name] = tf.extractfile(m).read()
    return out


def test_every_clip_is_stored_as_its_posterior_with_the_vaes_identity(latents, digits):
    from vdp_ray.data.shards import read_manifest
    from vdp_ray.pixels import to_model_range

    out, vae = latents
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["kind"] == "latents" and manifest["vae_id"] == vae_id(vae) and manifest["dtype"] == "float16"
    assert manifest["count"] == read_manifest(digits / "train")["count"] and manifest["latent_shape"] == [4, 4, 8, 8]
    assert json.loads((out / "manifest.json").read_text())["splits"] == ["train", "val"]
    members = read_members(out / "val")
    key = sorted(k for k in members if k.endswith(".npy"))[0][: -len(".npy")]
    posterior = np.load(io.BytesIO(members[f"{key}.npy"]))
    assert posterior.dtype == np.float16 and posterior.shape == (2, 4, 4, 8, 8)
    clips = {
        k[: -len(".npy")]: np.load(io.BytesIO(v)) for k, v in read_members(digits / "val").items() if k.endswith(".npy")
    }
    with torch.no_grad():  # the stored mean and std are the encoder's, to fp16 precision
        q = Export(vae).model().encode(to_model_range(torch.from_numpy(clips[key]).permute(3, 0, 1, 2))[None])
    assert np.allclose(posterior[0], q.mean[0].numpy(), atol=2e-3, rtol=2e-3)
    assert np.allclose(posterior[1], q.std[0].numpy(), atol=2e-3, rtol=2e-3)


def test_encode_refuses_what_it_did_not_write_and_the_wrong_inputs(latents, digits, tmp_path):
    out, vae = latents
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for opts, field in (
        (EncodeOptions(shards=str(digits), vae=str(vae), out=str(mine)), "out"),
        (EncodeOptions(shards=str(digits), vae=str(vae), out=str(digits / "train" / "x")), "out"),
        (EncodeOptions(shards=str(out), vae=str(vae), out=str(tmp_path / "again")), "shards"),
        (EncodeOptions(shards=str(digits), vae=str(tmp_path), out=str(tmp_path / "o")), "vae"),
    ):
        with pytest.raises(OptionError) as err:
            encode_latents(opts, log=lambda *_: None)
        assert err.value.field == field
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "again").exists()


def test_a_run_refuses_latents_of_another_vae_or_geometry_before_any_work(latents, digits, tmp_path):
    from vdp_ray.train.trainer import check_inputs

    out, vae = latents
    other = vae_export(tmp_path / "other", seed=1)
    base = [f"data.train={out / 'train'}", "data.val=null", f"run.dir={tmp_path / 'run'}", "train.stages=[dit]"]
    cfg = load_config(ROOT / "experiments" / "tiny_dit.yaml", [*base, f"vae.export={other}"])
    with pytest.raises(ConfigError, match=r"data\.train: latent shards .* were made by the VAE at"):
        check_inputs(cfg)
    cfg = load_config(ROOT / "experiments" / "tiny_dit.yaml", [*base, f"vae.export={vae}", "data.frames=12"])
    with pytest.raises(ConfigError, match="hold clips of"):
        check_inputs(cfg)
    check_inputs(load_config(ROOT / "experiments" / "tiny_dit.yaml", [*base, f"vae.export={vae}"]))
