"""Reads which digit a moving-digits frame shows: logistic regression on scikit-learn's bundled digits (the sprites
the clips are drawn from, at the clips' sprite size), trained once per process and cached. No download.

Two ways to read: ``read_at`` crops the sprite window at a known position (``vdp evaluate``'s identity metric reads
each digit of the last predicted frame where it truly is), ``read``/``read_clip`` crop around a frame's ink (the
text benchmark, where the position is whatever the model drew).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .moving_digits import DIGIT_FRACTION, digit_sprites

SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # one-pixel errors of position are read through


class DigitReader:
    def __init__(self, frame_size: int = 32, seed: int = 0, placements: int = 3):
        from sklearn.linear_model import LogisticRegression

        self.side = max(4, round(frame_size * DIGIT_FRACTION))
        sprites, labels = digit_sprites(self.side)
        rng = np.random.default_rng(seed)
        x, y = [], []
        for _ in range(placements):  # each sprite drawn where a clip could draw it, then cropped around its ink
            for sprite, label in zip(sprites, labels, strict=True):
                canvas = np.zeros((frame_size, frame_size), np.float32)
                top, left = rng.integers(0, frame_size - self.side + 1, 2)
                canvas[top : top + self.side, left : left + self.side] = sprite
                x.append(self.crop((canvas * 255).astype(np.uint8)).ravel())
                y.append(label)
        padded = np.pad(sprites, ((0, 0), (1, 1), (1, 1)))
        for dy, dx in SHIFTS:  # the sprite window at its position, give or take a pixel
            window = padded[:, 1 + dy : 1 + dy + self.side, 1 + dx : 1 + dx + self.side]
            x.extend(window.reshape(len(sprites), -1))
            y.extend(labels)
        self.model = LogisticRegression(max_iter=500, C=0.5, random_state=seed).fit(np.stack(x), np.array(y))

    @staticmethod
    def _gray(frame: np.ndarray) -> np.ndarray:
        return frame.astype(np.float32).reshape(frame.shape[0], frame.shape[1], -1).mean(-1) / 255.0

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """A side x side window (float in [0, 1]) centred on the frame's ink."""
        img = self._gray(frame)
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

    def read_at(self, frame: np.ndarray, positions) -> np.ndarray:
        """The digit in the sprite window at each top-left (y, x) of ``positions`` in one frame (H, W[, C]) uint8."""
        img = np.pad(self._gray(frame), self.side)
        crops = []
        for y, x in positions:
            top, left = int(np.rint(y)) + self.side, int(np.rint(x)) + self.side
            crops.append(img[top : top + self.side, left : left + self.side].ravel())
        return self.model.predict(np.stack(crops)) if crops else np.zeros(0, np.int64)


@lru_cache(maxsize=2)
def digit_reader(frame_size: int) -> DigitReader:
    """The reader for frames of this size, trained once per process."""
    return DigitReader(frame_size)
