"""Moving digits: the embedded default data set, made on the spot with no download.

Real handwritten digits from scikit-learn's bundled ``load_digits`` (1,797 scans of 8x8 pixels), upscaled
smoothly and bouncing off the walls of a square-ish canvas (the Moving MNIST idea, Srivastava et al. 2015).
The stochastic variant redraws a digit's velocity at random bounces (Stochastic Moving MNIST, Denton &
Fergus 2018), so the future is not a function of the past. Clip i is a function of (seed, i) alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DIGIT_FRACTION = 0.45  # digit side as a fraction of the canvas' shorter side (28 px on 64, as in Moving MNIST)
BOUNCE_REDRAW = 0.5  # stochastic variant: chance that a bounce also redraws the speed and angle


@lru_cache(maxsize=4)
def digit_sprites(side: int) -> tuple[np.ndarray, np.ndarray]:
    """All scikit-learn digits upscaled to side x side, float32 in [0, 1], and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    sprites = np.empty((len(data.images), side, side), np.float32)
    for i, img in enumerate(data.images):  # values 0..16
        small = Image.fromarray((img * (255 / 16)).astype(np.uint8))
        sprites[i] = np.asarray(small.resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    return sprites, data.target.astype(np.int64)


def moving_digits_clip(
    index: int,
    seed: int,
    frames: int,
    size: tuple[int, int],
    num_digits: tuple[int, int] = (1, 3),
    stochastic: bool = False,
) -> tuple[np.ndarray, dict]:
    """One clip (T, H, W, 1) uint8 and what is in it (digit labels, start positions, velocities, the sprite side
    and every frame's digit positions)."""
    h, w = size
    side = max(4, round(min(h, w) * DIGIT_FRACTION))
    sprites, labels = digit_sprites(side)
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(num_digits[0], num_digits[1] + 1))
    picks = rng.integers(0, len(sprites), count)
    limit = np.array([h - side, w - side], np.float64)  # top-left corner stays in [0, limit]
    pos = rng.uniform(0, 1, (count, 2)) * limit
    vel = _random_velocity(rng, count, min(h, w))
    start_pos, start_vel = pos.copy(), vel.copy()

    canvas = np.zeros((frames, h, w), np.float32)
    track = []
    for t in range(frames):
        track.append(np.round(pos).astype(int).tolist())
        for d in range(count):
            y, x = np.round(pos[d]).astype(int)
            region = canvas[t, y : y + side, x : x + side]
            np.maximum(region, sprites[picks[d]], out=region)  # overlapping digits: brighter wins
        pos += vel
        for axis in range(2):
            low, high = pos[:, axis] < 0, pos[:, axis] > limit[axis]
            pos[low, axis] = -pos[low, axis]
            pos[high, axis] = 2 * limit[axis] - pos[high, axis]
            bounced = low | high
            vel[bounced, axis] *= -1
            if stochastic and bounced.any():
                redraw = bounced & (rng.uniform(size=count) < BOUNCE_REDRAW)
                if redraw.any():
                    new = _random_velocity(rng, int(redraw.sum()), min(h, w))
                    # keep moving away from the wall just hit
                    new[:, axis] = np.abs(new[:, axis]) * np.sign(vel[redraw, axis])
                    vel[redraw] = new
        pos = np.clip(pos, 0, limit)
    clip = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)[..., None]
    meta = {
        "digits": labels[picks].tolist(),
        "start_yx": start_pos.round(2).tolist(),
        "velocity_yx": start_vel.round(3).tolist(),
        "stochastic": stochastic,
        "side": side,
        "track_yx": track,  # each frame's top-left corner of every digit, as drawn
    }
    return clip, meta


def _random_velocity(rng: np.random.Generator, n: int, canvas: int) -> np.ndarray:
    """Random directions; speeds of 2-4 px per frame on a 64 px canvas, scaled with the canvas."""
    angle = rng.uniform(0, 2 * np.pi, n)
    speed = rng.uniform(2.0, 4.0, n) * canvas / 64
    return np.stack([np.sin(angle), np.cos(angle)], axis=1) * speed[:, None]
