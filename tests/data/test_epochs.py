"""`epochs` keeps every rank in step whatever its data: a bad clip never removes a batch (a rank that ended its epoch
early would wait forever for the others), and is still named and counted. No Ray: a stand-in for a dataset shard."""

import numpy as np

from vdp_ray.data.pipeline import BadClips, epochs


class Shard:
    """What `epochs` asks of a Ray dataset shard: ``iter_batches`` over the same batches every epoch."""

    def __init__(self, batches):
        self.batches = batches

    def iter_batches(self, **_):
        yield from ({k: v.copy() for k, v in b.items()} for b in self.batches)


def batch(first: int, bad: list[str]) -> dict:
    n = len(bad)
    clips = np.zeros((n, 1, 2, 4, 4), dtype=np.uint8)
    for i in range(n):
        clips[i] = 0 if bad[i] else first + i  # a bad clip decodes to zeros
    keys = np.asarray([f"k{first + i}" for i in range(n)])
    return {
        "clip": clips,
        "key": keys,
        "caption": np.asarray([""] * n, dtype=object),
        "bad": np.asarray(bad, dtype=object),
    }


def test_bad_clips_never_remove_a_batch_and_are_still_named_and_counted():
    shard = Shard(
        [
            batch(10, ["", "", "", ""]),
            batch(20, ["", "k21 in s.tar: garbage", "", "k23 in s.tar: garbage"]),
            batch(30, ["k30: x", "k31: x", "k32: x", "k33: x"]),  # nothing readable
            batch(40, ["", "", "", ""]),
        ]
    )
    named = []
    bad = BadClips(1.0, named.append)
    pairs = [pair for _, pair in zip(range(8), epochs(shard, batch_size=4, bad=bad), strict=False)]
    assert [e for e, _ in pairs] == [0] * 4 + [1] * 4, "two whole epochs of 4 batches"
    got = [b for _, b in pairs]
    assert [b["weight"] for b in got[:4]] == [1.0, 1.0, 0.0, 1.0], "one batch per step, the unreadable one weighted 0"
    assert all(b["clip"].shape == (4, 1, 2, 4, 4) for b in got), "every batch keeps its size"
    mixed = got[1]  # the bad rows replaced by the batch's readable ones, in turn
    assert mixed["key"] == ["k20", "k20", "k22", "k22"]
    assert [int(c.max()) for c in mixed["clip"]] == [20, 20, 22, 22]
    assert bad.bad == 2 * 6 and bad.seen == 2 * 16  # counted again in the second epoch
    assert sum("skipped clip k21 in s.tar: garbage" in line for line in named) == 2
