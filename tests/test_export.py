import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.export import Export, provenance, write_export
from vdp_ray.fsutil import OutputError, old_of
from vdp_ray.models import build_denoiser


def test_export_round_trip_and_replacement(tmp_path):
    cfg = load_config(
        None,
        [
            "model.preset=tiny",
            "data.channels=1",
            "data.size=[16, 16]",
            "data.frames=4",
            "data.context_frames=1",
            "diffusion.masks.context_max=2",
        ],
    )
    net = build_denoiser(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    path = write_export(tmp_path / "export", cfg, "unet3d", net.state_dict(), {"steps": 7})
    loaded = Export(path)
    assert loaded.meta == {"stage": "unet3d", "family": "unet3d", "steps": 7}
    assert loaded.cfg == cfg
    assert all(torch.equal(loaded.model().state_dict()[k], v) for k, v in net.state_dict().items())
    write_export(tmp_path / "export", cfg, "unet3d", net.state_dict(), {"steps": 8})  # replaces in place
    assert Export(path).meta["steps"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"], "no temporary folders left"

    # only an export is replaced: a folder of anything else (a run, the current folder) is refused, untouched
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    for target in (run, tmp_path):
        with pytest.raises(OutputError, match="not an export: refusing to replace what vdp did not write"):
            write_export(target, cfg, "unet3d", net.state_dict(), {"steps": 9})
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints").is_dir()
    # between the two renames of a swap, readers get the previous export
    path.rename(old_of(path))
    assert Export(path).meta["steps"] == 8


def test_not_an_export_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not an export \(missing model\.safetensors\)"):
        Export(tmp_path)


def test_provenance_says_which_weights_an_export_holds_and_when_training_did_not_help():
    assert provenance({"steps": 20}) == "the weights after 20 steps"
    chosen = {"steps": 500, "trained_steps": 718, "selected_by": {"metric": "val/psnr_gain", "value": 3.5, "step": 500}}
    assert provenance(chosen) == "the EMA weights of step 500 of 718, best on val/psnr_gain (+3.5)"
    start = {**chosen, "steps": 0, "selected_by": {"metric": "val/psnr_gain", "value": 13.18, "step": 0}}
    words = provenance(start)
    assert words.startswith("the EMA weights of step 0 of 718, best on val/psnr_gain (+13.18)")
    assert "training did not beat the untrained model on validation" in words
    assert "did not beat" not in provenance({**start, "trained_steps": 0})  # nothing trained yet: nothing to say
