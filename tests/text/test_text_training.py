"""`vdp encode-text` on captioned moving-digit shards (a real Ray Data job, a local random CLIP), and a text DiT
trained on them (from `vdp encode`'s latent shards) through Ray Train + DeepSpeed; refusals before any Ray work
when embeddings are missing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.exports import dit_export

from vdp_ray.cli import main
from vdp_ray.config import ConfigError, load_config
from vdp_ray.export import Export
from vdp_ray.text import TextEncoder
from vdp_ray.train import fit

pytestmark = pytest.mark.train  # one test trains; the others share its encoded shards
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoded(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    shards = shutil.copytree(digits, root / "digits")  # encode-text writes into the split folders
    encoder = root / "encoder"
    code = main(
        [
            "encode-text",
            str(shards),
            "--encoder",
            str(encoder),
            "--make-encoder",
            "--max-tokens",
            "16",
            "--batch-size",
            "8",
        ]
    )
    assert code == 0
    return shards, encoder


def _captions(split_dir):
    import tarfile

    found = set()
    for tar_path in split_dir.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    found.update(json.loads(tar.extractfile(m).read())["captions"])
    return found


def test_encode_text_stores_every_distinct_caption_once_with_the_null_text_first(encoded, capsys):
    shards, encoder = encoded
    for split in ("train", "val"):
        index = json.loads((shards / split / "text" / "index.json").read_text())
        assert index["captions"][0] == "" and set(index["captions"][1:]) == _captions(shards / split)
        assert len(index["captions"]) == len(set(index["captions"])) and index["dim"] == 64
        stored = load_file(str(shards / split / "text" / "embeddings.safetensors"))
        direct = TextEncoder(encoder, max_tokens=16).encode(index["captions"])
        assert stored["tokens"].dtype == torch.float16 and stored["tokens"].shape == (len(index["captions"]), 16, 64)
        assert torch.allclose(stored["tokens"].float(), direct["tokens"], atol=2e-2)  # fp16 storage
        assert torch.equal(stored["mask"].bool(), direct["mask"])
    # an existing encoder is never overwritten
    assert main(["encode-text", str(shards), "--encoder", str(encoder), "--make-encoder"]) == 2
    assert "already holds a model" in capsys.readouterr().err


def _cfg(shards, encoder, run, vae, *overrides):
    return load_config(
        ROOT / "experiments" / "tiny_text_dit.yaml",
        [
            f"data.train={shards / 'train'}",
            f"data.val={shards / 'val'}",
            f"run.dir={run}",
            f"run.name={run.name}",
            f"text.encoder={encoder}",
            f"vae.export={vae}",
            "train.stages=[dit]",
            "train.workers=2",
            "train.cpus_per_worker=0.5",
            "train.batch_size=4",
            "train.max_steps=12",
            "train.log_every=2",
            "train.val_every=6",
            "train.checkpoint_every=12",
            "train.preview_every=12",
            "train.val_batches=1",
            "train.warmup_steps=2",
            "train.lr=1e-3",
            "sampling.steps=3",
            "sampling.text_guidance=2.0",
            "sampling.guidance=1.5",
            *overrides,
        ],
    )


def test_a_text_dit_trains_on_captions_and_its_export_knows_its_encoder(encoded, tmp_path):
    """From `vdp encode`'s latent shards of the training split (the caption tables travel with them; no encoder
    pass in a step), validated and previewed on the pixel clips of the validation split."""
    from vdp_ray.data.latent_shards import EncodeOptions, encode_latents

    shards, encoder = encoded
    vae = dit_export(tmp_path / "random") / "vae"
    latents = tmp_path / "latents"
    encode_latents(
        EncodeOptions(shards=str(shards / "train"), vae=str(vae), out=str(latents), batch_size=8), log=lambda *_: None
    )
    assert (latents / "train" / "text" / "index.json").is_file()
    run = tmp_path / "textrun"
    exports = fit(_cfg(shards, encoder, run, vae, f"data.train={latents / 'train'}"))
    export = Export(exports["dit"])
    assert export.cfg.text.encoder == str(encoder) and export.cfg.model.dit.text_dim == 64
    rows = [json.loads(x) for x in (run / "logs" / "dit.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    # training latents come from the shards: the encoder (and its cache) ran only for validation (step 6 on)
    assert not any("latent_cache_hits" in r for r in rows if r["step"] < 6)
    losses = [r["loss"] for r in rows]
    assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < losses[0], losses  # it learns from the captions
    log = (run / "logs" / "dit.log").read_text()
    assert "val/loss" in log and "val/psnr" in log  # validation and the guided preview ran with captions
    model = export.model()
    assert model.text_dim == 64
    # training moved the cross-attention off zero: the caption now changes the output
    x, t = torch.randn(1, 4, 4, 8, 8), torch.tensor([300])
    enc = TextEncoder(encoder, max_tokens=16)
    a, b = (enc.encode([c]) for c in ("a 3 moving left", "a 7 moving up"))
    kw = lambda e: {"text_tokens": e["tokens"], "text_mask": e["mask"], "text_pooled": e["pooled"]}
    with torch.no_grad():
        assert not torch.allclose(model(x, t, None, **kw(a)), model(x, t, None, **kw(b)))


def test_missing_or_mismatched_embeddings_are_refused_before_any_training(encoded, tmp_path):
    shards, encoder = encoded
    bare = tmp_path / "bare"
    shutil.copytree(shards, bare, ignore=shutil.ignore_patterns("text"))
    vae = dit_export(tmp_path / "random") / "vae"
    with pytest.raises(ConfigError, match=r"has no caption embeddings; run `vdp encode-text"):
        fit(_cfg(bare, encoder, tmp_path / "a", vae))
    with pytest.raises(ConfigError, match=r"were made with .* \(max_tokens 16\).*text.max_tokens 32"):
        fit(_cfg(shards, encoder, tmp_path / "b", vae, "text.max_tokens=32"))
    with pytest.raises(ConfigError, match="text conditioning is built into the DiT"):
        load_config(ROOT / "experiments" / "tiny_unet.yaml", [f"text.encoder={encoder}"])
    assert not (tmp_path / "a" / "logs").exists()  # refused before a run folder filled up
