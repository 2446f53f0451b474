"""The Predictor on tiny exports made here (fresh random weights): shapes, dtypes, given frames kept,
seeds, roll-outs, latent models, and a message for every input it cannot take."""

import numpy as np
import pytest

from vdp_ray import Predictor
from vdp_ray.predict import PredictError, fit_frames


def frames(n, h=16, w=16, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_predict_shapes_dtype_and_given_frames_kept(unet_export):
    p = Predictor.from_export(unet_export, device="cpu")
    ctx = frames(3)
    out = p.predict(ctx, 3, seed=0)
    assert out.shape == (3, 16, 16, 1) and out.dtype == np.uint8
    full = p.predict(ctx, 3, seed=0, include_context=True)
    assert np.array_equal(full[:3], ctx), "the given frames come back bit-exact"
    assert np.array_equal(full[3:], out)
    gray = p.predict(ctx[..., 0], 2, seed=0)  # (T, H, W) is one channel
    assert gray.shape == (2, 16, 16, 1)
    batch = p.predict(np.stack([ctx, frames(3, seed=1)]), 2, seed=0)
    assert batch.shape == (2, 2, 16, 16, 1)


def test_seeds_make_it_deterministic(unet_export):
    p = Predictor.from_export(unet_export, device="cpu")
    ctx = frames(2)
    a, b, c = (p.predict(ctx, 4, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_roll_out_past_the_window(unet_export):
    p = Predictor.from_export(unet_export, device="cpu")
    assert p.window == 6 and p.max_context == 3
    out = p.predict(frames(3), 10, seed=0, include_context=True)  # 3 windows of 3 new frames, cut to 10
    assert out.shape == (13, 16, 16, 1)
    # the roll-out conditions on its own frames: the first window's frames are the same as a short prediction
    first = p.predict(frames(3), 3, seed=0)
    assert np.array_equal(out[3:6], first)


def test_generate_interpolate_refine(unet_export):
    p = Predictor.from_export(unet_export, device="cpu")
    assert p.generate(batch=2, seed=0).shape == (2, 6, 16, 16, 1)
    assert p.generate(9, seed=0).shape == (9, 16, 16, 1)
    f = frames(2)
    between = p.interpolate(f[0], f[1], 4, seed=0)
    assert between.shape == (4, 16, 16, 1)
    clip = frames(6)
    assert p.refine(clip, 0.3, seed=0).shape == clip.shape
    # a whisper of noise barely changes the clip; full strength redraws it
    small = np.abs(p.refine(clip, 0.02, seed=0).astype(int) - clip).mean()
    full = np.abs(p.refine(clip, 1.0, seed=0).astype(int) - clip).mean()
    assert small < full


def test_latent_model_predicts_in_whole_latent_frames(dit_export):
    p = Predictor.from_export(dit_export, device="cpu")
    assert p.temporal_compression == 2 and p.vae is not None
    ctx = frames(4, 32, 32)
    out = p.predict(ctx, 6, seed=0, include_context=True)
    assert out.shape == (10, 32, 32, 1)
    assert np.array_equal(out[:4], ctx)
    assert p.predict(frames(3, 32, 32), 4, seed=0).shape == (4, 32, 32, 1)  # uses the last 2 frames
    with pytest.raises(PredictError, match="needs at least 2"):
        p.predict(frames(1, 32, 32), 2)
    assert p.interpolate(frames(2, 32, 32), frames(2, 32, 32, seed=3), 4, seed=0).shape == (4, 32, 32, 1)
    with pytest.raises(PredictError, match="multiple of 2"):
        p.interpolate(frames(2, 32, 32), frames(2, 32, 32), 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.predict(frames(2, 20, 16), 2), r"frames are 20x16; this model takes 16x16"),
        (lambda p: p.predict(frames(2, c=3), 2), r"3 channel\(s\); this model takes 1"),
        (lambda p: p.predict(frames(2).astype(np.float32), 2), r"expected uint8"),
        (lambda p: p.predict(frames(2), 0), r"num_future: must be a positive integer"),
        (lambda p: p.predict(frames(2), 2, steps=0), r"steps: must be in \[1, 1000\], got 0"),
        (lambda p: p.predict(frames(2), 2, sampler="lms"), r"sampler: unknown 'lms'"),
        (lambda p: p.predict(np.zeros((0, 16, 16, 1), np.uint8), 2), r"no frames"),
        (lambda p: p.refine(frames(6), 1.5), r"strength: must be in \(0, 1\]"),
        (lambda p: p.predict(np.zeros((16, 16), np.uint8), 2), r"expected \(T, H, W, C\)"),
    ],
)
def test_bad_input_is_named(unet_export, call, message):
    with pytest.raises(PredictError, match=message):
        call(Predictor.from_export(unet_export, device="cpu"))


def test_not_an_export(tmp_path):
    with pytest.raises(PredictError, match="no such export folder"):
        Predictor.from_export(tmp_path / "missing")
    with pytest.raises(PredictError, match="not an export"):
        Predictor.from_export(tmp_path)


def test_fit_frames_crops_resizes_and_converts():
    rgb = np.zeros((2, 40, 80, 3), np.uint8)
    rgb[:, :, 20:60] = (255, 255, 255)  # the centre square of a wide frame
    out = fit_frames(rgb, (16, 16), 1)
    assert out.shape == (2, 16, 16, 1) and out.dtype == np.uint8
    assert out.min() >= 250, "centre crop keeps the white middle"
