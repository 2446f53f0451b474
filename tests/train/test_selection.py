"""train.select_by: the export carries the EMA weights of the best validation, kept beside the run and across a
restart; a fresh run in the same folder starts its own record; `last` keeps nothing."""

import torch

from vdp_ray.train.selection import Selection, selected_weights


class FakeEMA:
    """What Selection asks of the EMA: its averaged weights (rank 0's gather)."""

    def __init__(self):
        self.value = 0.0

    def state_dict(self, everywhere=True):
        return {"w": torch.tensor([self.value])}


class Log:
    def __init__(self):
        self.lines = []

    def line(self, text):
        self.lines.append(text)


def test_the_best_validation_is_kept_and_survives_a_restart(tmp_path):
    ema, log = FakeEMA(), Log()
    sel = Selection("val/psnr_gain", tmp_path, "unet3d", rank=0, resumed=False)
    for step, gain in ((100, -1.0), (200, 0.5), (300, 0.2), (400, float("nan"))):
        ema.value = float(step)
        sel.offer({"val/loss": 0.1, "val/psnr_gain": gain}, step, ema, log)
    sel.offer({"val/loss": 0.1}, 500, ema, log)  # a validation without a preview: nothing to judge
    weights, score = selected_weights(tmp_path, "unet3d", "val/psnr_gain")
    assert weights["w"].item() == 200.0 and score == {"metric": "val/psnr_gain", "value": 0.5, "step": 200}
    assert len(log.lines) == 2 and "step 200" in log.lines[-1]
    resumed = Selection("val/psnr_gain", tmp_path, "unet3d", rank=0, resumed=True)  # a restart: the record holds
    ema.value = 600.0
    resumed.offer({"val/psnr_gain": 0.4}, 600, ema, log)
    assert selected_weights(tmp_path, "unet3d", "val/psnr_gain")[1]["step"] == 200
    Selection("val/psnr_gain", tmp_path, "unet3d", rank=0, resumed=False)  # a new run: an old best is not its own
    assert selected_weights(tmp_path, "unet3d", "val/psnr_gain") == (None, None)


def test_val_loss_is_lower_is_better_and_last_keeps_nothing(tmp_path):
    ema = FakeEMA()
    sel = Selection("val/loss", tmp_path, "dit", rank=0, resumed=False)
    for step, loss in ((10, 0.5), (20, 0.3), (30, 0.4)):
        ema.value = float(step)
        sel.offer({"val/loss": loss}, step, ema, Log())
    assert selected_weights(tmp_path, "dit", "val/loss")[0]["w"].item() == 20.0
    last = Selection("last", tmp_path, "vae", rank=0, resumed=False)
    last.offer({"val/loss": 0.1}, 10, ema, Log())
    assert selected_weights(tmp_path, "vae", "last") == (None, None) and not (tmp_path / "best" / "vae").exists()
    other_rank = Selection("val/loss", tmp_path / "r1", "dit", rank=1, resumed=False)
    other_rank.offer({"val/loss": 0.1}, 10, ema, Log())  # gathers with rank 0, writes nothing
    assert not (tmp_path / "r1").exists()


def test_previews_score_train_preview_clips_from_the_first_validations_batches():
    """val/psnr_gain picks the export: it is scored on train.preview_clips validation clips gathered over the first
    validation's batches (a mean over one batch of 8 swung by 2 dB), the same clips at every preview after."""
    from vdp_ray.train.loop import Preview

    class Pixels:
        def pixels(self, clips):
            return clips.float()

    preview = Preview(Pixels(), FakeEMA(), torch.device("cpu"), validation_clips=20)
    preview.offer_training_clips(torch.zeros(8, 1, 4, 2, 2), ["t"] * 8)  # before any validation: training clips
    assert len(preview.clips) == 8 and not preview.from_validation
    for i in range(4):  # the first validation: 4 batches of 8
        preview.offer_validation_clips(torch.full((8, 1, 4, 2, 2), float(i + 1)), [f"v{i}"] * 8)
    preview.validation_done()
    assert preview.from_validation and len(preview.clips) == 20 and len(preview.captions) == 20
    assert preview.clips[:, 0, 0, 0, 0].tolist() == [1.0] * 8 + [2.0] * 8 + [3.0] * 4
    assert preview.captions[-1] == "v2"
    preview.offer_validation_clips(torch.full((8, 1, 4, 2, 2), 9.0), ["later"] * 8)  # later validations: the same
    preview.validation_done()
    assert len(preview.clips) == 20 and float(preview.clips.max()) == 3.0
