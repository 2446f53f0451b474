"""Reads which digit a moving-digits frame shows: logistic regression on scikit-learn's bundled digits (the
sprites the clips are drawn from, at the clips' sprite size, with one-pixel shifts), applied to a crop around
the brightest blob of a frame. A measuring instrument for text-conditioned generation (issue 9): no download.
"""

from __future__ import annotations

import numpy as np

from vdp_ray.data.moving_digits import DIGIT_FRACTION, digit_sprites


class DigitReader:
    def __init__(self, frame_size: int = 32, seed: int = 0, placements: int = 3):
        from sklearn.linear_model import LogisticRegression

        self.side = max(4, round(frame_size * DIGIT_FRACTION))
        sprites, labels = digit_sprites(self.side)
        rng = np.random.default_rng(seed)
        x, y = [], []
        for _ in range(placements):  # each sprite drawn where a clip could draw it, then cropped like a frame
            for sprite, label in zip(sprites, labels, strict=True):
                canvas = np.zeros((frame_size, frame_size), np.float32)
                top, left = rng.integers(0, frame_size - self.side + 1, 2)
                canvas[top : top + self.side, left : left + self.side] = sprite
                x.append(self.crop((canvas * 255).astype(np.uint8)).ravel())
                y.append(label)
        self.model = LogisticRegression(max_iter=500, C=0.5, random_state=seed).fit(np.stack(x), np.array(y))

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """A side x side window (float in [0, 1]) centred on the frame's ink."""
        img = frame.astype(np.float32).reshape(frame.shape[0], frame.shape[1], -1).mean(-1) / 255.0
        ink = np.argwhere(img > 0.25)
        if len(ink) == 0:
            return np.zeros((self.side, self.side), np.float32)
        (y0, x0), (y1, x1) = ink.min(0), ink.max(0)
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        pad = np.pad(img, self.side)
        top, left = cy + self.side - self.side // 2, cx + self.side - self.side // 2
        return pad[top : top + self.side, left : left + self.side]

    def read(self, frames: np.ndarray) -> np.ndarray:
        """Digit per frame: frames (N, H, W[, C]) uint8 -> (N,) int."""
        crops = np.stack([self.crop(f) for f in frames]).reshape(len(frames), -1)
        return self.model.predict(crops)

    def read_clip(self, clip: np.ndarray) -> int:
        """The digit a clip (T, H, W[, C]) shows: the most common reading over its frames."""
        return int(np.bincount(self.read(clip), minlength=10).argmax())
