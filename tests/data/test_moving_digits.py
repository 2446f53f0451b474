import numpy as np

from vdp_ray.data.moving_digits import moving_digits_clip


def test_deterministic_per_seed_and_index():
    a, meta_a = moving_digits_clip(5, seed=1, frames=10, size=(32, 32))
    b, meta_b = moving_digits_clip(5, seed=1, frames=10, size=(32, 32))
    assert np.array_equal(a, b) and meta_a == meta_b
    assert not np.array_equal(a, moving_digits_clip(5, seed=2, frames=10, size=(32, 32))[0])
    assert not np.array_equal(a, moving_digits_clip(6, seed=1, frames=10, size=(32, 32))[0])


def test_digits_move_stay_inside_and_match_their_labels():
    counts = set()
    for i in range(40):
        clip, meta = moving_digits_clip(i, seed=0, frames=24, size=(48, 64), num_digits=(1, 3))
        assert clip.shape == (24, 48, 64, 1) and clip.dtype == np.uint8
        counts.add(len(meta["digits"]))
        assert all(0 <= d <= 9 for d in meta["digits"])
        ink = clip.reshape(24, -1).astype(float).sum(1)
        assert (ink > 0).all(), "a digit is visible in every frame"
        assert not np.array_equal(clip[0], clip[-1]), "digits move"
    assert counts == {1, 2, 3}


def test_stochastic_variant_changes_course_at_bounces():
    differs = 0
    for i in range(20):
        plain, _ = moving_digits_clip(i, seed=0, frames=40, size=(32, 32), num_digits=(1, 1))
        bumpy, _ = moving_digits_clip(i, seed=0, frames=40, size=(32, 32), num_digits=(1, 1), stochastic=True)
        assert np.array_equal(plain[0], bumpy[0]), "same start"
        differs += not np.array_equal(plain, bumpy)
    assert differs >= 5, "with 40 frames most clips bounce and some redraw their velocity"
