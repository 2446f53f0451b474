import numpy as np
import pytest
from support.videos import corrupt_split, moving_square_frames, read_shard_samples, write_video

from vdp_ray.config import load_config
from vdp_ray.data.pipeline import BadClips, check_shards, clip_dataset, epochs, list_shards
from vdp_ray.data.shards import ShardError, ShardOptions, shard

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    for i in range(3):
        write_video(root / "src" / f"v{i}.avi", moving_square_frames(24, seed=i))
    shard(
        ShardOptions(out=str(root / "out"), sources=[str(root / "src")], frames=8, size=(24, 32), shard_size=4),
        log=lambda *_: None,
    )
    return root / "out" / "train"


def data_cfg(**overrides):
    items = [f"data.{k}={v}" for k, v in overrides.items()]
    return load_config(
        None,
        [
            "data.frames=8",
            "data.size=[24, 32]",
            "data.context_frames=2",
            "model.preset=tiny",
            "diffusion.masks.context_max=4",
            *items,
        ],
    ).data


def test_validation_clips_are_the_source_frames_as_bytes(video_shards):
    """Clips travel as uint8 (4x less than float32 through the object store); the loop makes them floats in
    [-1, 1] on its device, losslessly."""
    from vdp_ray.pixels import to_model_range, to_uint8

    truth = read_shard_samples(video_shards)
    batch = clip_dataset(str(video_shards), data_cfg(), train=False).take_batch(100)
    assert batch["clip"].shape == (9, 3, 8, 24, 32) and batch["clip"].dtype == np.uint8
    assert sorted(batch["key"]) == sorted(truth)
    for clip, key in zip(batch["clip"], batch["key"], strict=True):
        assert np.array_equal(clip, truth[key][0].transpose(3, 0, 1, 2))  # (C, T, H, W)
        x = to_model_range(clip)
        assert x.min() >= -1 and x.max() <= 1 and np.array_equal(to_uint8(x).numpy(), clip)


def test_training_clips_are_cropped_in_time_resized_and_recoloured(video_shards):
    cfg = data_cfg(frames=5, size="[12, 16]", channels=1, crop_scale=0.5, hflip="true")
    batch = clip_dataset(str(video_shards), cfg, train=True, seed=3).take_batch(9)
    clips = batch["clip"]
    assert clips.shape == (9, 1, 5, 12, 16) and clips.dtype == np.uint8
    assert clips.std() > 0


def test_augmentation_is_the_same_for_every_frame(tmp_path):
    static = np.repeat(moving_square_frames(1, seed=4), 10, axis=0)  # ten identical frames
    write_video(tmp_path / "src" / "still.avi", static)
    shard(
        ShardOptions(out=str(tmp_path / "out"), sources=[str(tmp_path / "src")], frames=10, size=(24, 32)),
        log=lambda *_: None,
    )
    ds = clip_dataset(str(tmp_path / "out" / "train"), data_cfg(frames=10, crop_scale=0.3, hflip="true"), train=True)
    seen = set()
    for _ in range(6):  # each pass draws a new crop/flip
        clip = ds.take_batch(1)["clip"][0]
        assert all(np.array_equal(clip[:, 0], clip[:, t]) for t in range(10)), "one window for all frames"
        seen.add(clip.tobytes())
    assert len(seen) > 1, "augmentation varies between passes"


def test_epochs_repeat_with_full_batches(video_shards):
    ds = clip_dataset(str(video_shards), data_cfg(), train=True)
    seen = [
        (epoch, batch["clip"].shape[0])
        for epoch, batch in epochs(ds.iterator(), batch_size=4, shuffle_buffer=8, max_epochs=3)
    ]
    assert [e for e, _ in seen] == [0, 0, 1, 1, 2, 2]  # 9 clips -> 2 full batches per epoch
    assert all(n == 4 for _, n in seen)
    with pytest.raises(ShardError, match="no batch of 64 clips"):
        next(epochs(ds.iterator(), batch_size=64))


def test_shard_lookup_and_early_checks(video_shards, tmp_path):
    assert list_shards(str(video_shards)) == sorted(str(p) for p in video_shards.glob("*.tar"))
    assert list_shards(str(video_shards / "*.tar")) == list_shards(str(video_shards))
    with pytest.raises(ShardError, match="no such shard folder"):
        list_shards(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"no \.tar shards found"):
        list_shards(str(tmp_path / "empty"))
    with pytest.raises(ShardError, match=r"shards hold 8-frame clips but data\.frames is 12"):
        check_shards(str(video_shards), data_cfg(frames=12))


def test_bad_clips_are_skipped_named_and_counted_and_a_truncated_shard_is_refused(video_shards, tmp_path):
    """A clip that cannot be decoded is replaced in its batch by a readable one (not a failed Ray Data task, which
    would restart the training group on the same file for ever; not a dropped batch, which would leave the ranks
    out of step), named with its shard, and counted against data.max_bad_fraction; a shard whose size differs
    from its manifest is refused before anything starts."""
    import shutil

    bad = tmp_path / "bad"
    spoiled = corrupt_split(video_shards, bad, every=3)  # 5 of the 9 clips in 3 shards
    noted = []
    skips = BadClips(0.5, noted.append)
    ds = clip_dataset(str(bad), data_cfg(), train=True, keep_bad=True)
    batches = [b for _, b in epochs(ds.iterator(), batch_size=3, max_epochs=1, drop_last=False, bad=skips)]
    keys = [k for b in batches if b["weight"] for k in b["key"]]
    assert len(spoiled) == 5 and len(set(keys)) == 4 and not set(keys) & set(spoiled)
    assert len(batches) == 3 and all(b["clip"].shape[0] == len(b["key"]) == len(b["caption"]) == 3 for b in batches)
    assert sum(b["weight"] == 0 for b in batches) <= 1  # only a batch of nothing but spoiled clips weighs nothing
    assert (skips.seen, skips.bad) == (9, 5) and skips.too_many()  # 5 > max(4, 0.5 x 9)
    assert all(any(key in line and ".tar" in line for line in noted) for key in spoiled), noted
    strict = BadClips(0.0, None)
    strict.note([""] * 4 + ["x"] * 5)
    assert strict.too_many() and "5 of 9 clips could not be read" in strict.message()
    # without keep_bad (evaluation, vdp encode): left out (and named on the task's stderr)
    rows = clip_dataset(str(bad), data_cfg(), train=False).take_all()
    assert sorted(r["key"] for r in rows) == sorted(set(keys)) and "bad" not in rows[0]

    cut = tmp_path / "cut"
    shutil.copytree(video_shards, cut)
    first = sorted(cut.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes()[:1500])
    with pytest.raises(ShardError, match=rf"{first.name}: 1500 bytes, its manifest says \d+: truncated"):
        check_shards(str(cut), data_cfg())


def test_flips_time_reversal_and_channel_shuffles_are_exact_transforms_of_the_clip(video_shards):
    """Each training clip is its source clip vertically flipped, played backwards and/or with its colour channels
    reordered (nothing else changes: no crop, no horizontal flip); validation clips never are."""
    import itertools

    truth = {k: v[0].transpose(3, 0, 1, 2) for k, v in read_shard_samples(video_shards).items()}  # (C, T, H, W)
    cfg = data_cfg(vflip="true", reverse="true", channel_shuffle="true")
    seen = set()
    for seed in range(2):
        batch = clip_dataset(str(video_shards), cfg, train=True, seed=seed).take_batch(9)
        for clip, key in zip(batch["clip"], batch["key"], strict=True):
            src = truth[key]
            variants = {}
            for vf, rev, perm in itertools.product((False, True), (False, True), itertools.permutations(range(3))):
                x = src[list(perm)]
                x = x[:, ::-1] if rev else x
                variants[(vf, rev, perm)] = x[:, :, ::-1] if vf else x
            match = [name for name, x in variants.items() if np.array_equal(clip, x)]
            assert match, key
            seen.add(match[0])
    assert len(seen) > 4  # the draws vary
    val = clip_dataset(str(video_shards), cfg, train=False).take_batch(9)
    assert all(np.array_equal(c, truth[k]) for c, k in zip(val["clip"], val["key"], strict=True))
