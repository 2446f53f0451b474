"""The instrument that scores prompted digits (experiments/bench/text_digits.py): trained here on
scikit-learn's digits, it must read real moving-digit clips nearly perfectly before it can judge generated ones."""

import numpy as np
from support.digit_reader import DigitReader

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
