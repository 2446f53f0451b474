import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.export import Export, write_export
from vdp_ray.fsutil import OutputError, old_of
from vdp_ray.models import build_denoiser


def test_export_round_trip_and_replacement(tmp_path):
    cfg = load_config(None, ["model.preset=tiny", "data.channels=1", "data.size=[16, 16]", "data.frames=4",
                             "data.context_frames=1",
                             "diffusion.masks.context_max=2"])  # fmt: skip
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
