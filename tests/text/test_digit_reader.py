"""The instrument that scores prompted digits (experiments/bench/text_digits.py): trained here on
scikit-learn's digits, it must read real moving-digit clips nearly perfectly before it can judge generated ones."""

import numpy as np

from vdp_ray.data.digit_reader import DigitReader
from vdp_ray.data.moving_digits import moving_digits_clip


def test_the_digit_reader_reads_real_moving_digit_clips():
    reader = DigitReader(32)
    truth, read = [], []
    for i in range(100):
        clip, meta = moving_digits_clip(i, 123, 8, (32, 32), (1, 1))  # a seed the reader never saw placed
        truth.append(meta["digits"][0])
        read.append(reader.read_clip(clip))
    accuracy = np.mean(np.array(truth) == np.array(read))
    assert accuracy >= 0.95, accuracy  # chance is 0.1
    assert reader.read_clip(np.zeros((4, 32, 32, 1), np.uint8)) in range(10)  # a blank clip still gets an answer


def test_the_digit_reader_reads_digits_where_the_clip_says_they_are():
    """vdp evaluate's identity metric: each digit read in the window at its recorded position, give or take a
    pixel. Alone in the frame nearly always; where digits overlap (brighter wins) less often, which is why the
    metric counts only digits the reader gets right in the true frame."""
    reader = DigitReader(32)
    for digits, floor in (((1, 1), 0.95), ((1, 3), 0.7)):
        right = shifted_right = total = 0
        for i in range(60):
            clip, meta = moving_digits_clip(i, 321, 8, (32, 32), digits)
            assert meta["side"] == reader.side and len(meta["track_yx"]) == 8
            last, labels = meta["track_yx"][-1], np.array(meta["digits"])
            right += int((reader.read_at(clip[-1], last) == labels).sum())
            shifted_right += int((reader.read_at(clip[-1], [(y + 1, x) for y, x in last]) == labels).sum())
            total += len(labels)
        assert right / total >= floor and shifted_right / total >= floor - 0.1, (digits, right / total)
    assert reader.read_at(np.zeros((32, 32, 1), np.uint8), []).shape == (0,)
