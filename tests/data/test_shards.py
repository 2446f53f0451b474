import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.hostile import SDP
from support.videos import moving_square_frames, read_shard_samples, write_frame_folder, write_video

from vdp_ray.data.shards import ShardError, ShardOptions, parse_split, read_manifest, shard

pytestmark = pytest.mark.usefixtures("ray_local")


def quiet(*_):
    pass


def test_frame_folders_and_lossless_videos_round_trip_exactly(tmp_path):
    a, b = moving_square_frames(20, seed=1), moving_square_frames(13, seed=2)
    write_frame_folder(tmp_path / "src" / "folder_a", a)
    write_video(tmp_path / "src" / "video_b.avi", b, fps=12)
    summary = shard(
        ShardOptions(
            out=str(tmp_path / "out"), sources=[str(tmp_path / "src")], frames=4, size=(24, 32), stride=3, interval=2
        ),
        log=quiet,
    )
    samples = read_shard_samples(tmp_path / "out" / "train")
    # span = (4-1)*2+1 = 7 frames: starts 0,3,..,13 for 20 frames (5 clips); 0,3,6 for 13 frames (3 clips)
    assert summary["splits"]["train"]["count"] == len(samples) == 8
    for clip, meta in samples.values():
        source = a if meta["source"].endswith("folder_a") else b
        start = meta["start"]
        assert np.array_equal(clip, source[start : start + 7 : 2]), meta
        assert meta["interval"] == 2 and meta["stride"] == 3 and meta["frames"] == 4
    starts = sorted(m["start"] for _, m in samples.values() if m["source"].endswith("video_b.avi"))
    assert starts == [0, 3, 6]
    assert next(m["fps"] for _, m in samples.values() if m["source"].endswith(".avi")) == 12
    assert all("." not in key for key in samples)
    manifest = read_manifest(tmp_path / "out" / "train")
    assert manifest["count"] == 8 and manifest["shape"] == [4, 24, 32, 3]
    assert sum(s["count"] for s in manifest["shards"]) == 8


def test_mp4_sources_and_mp4_clips(tmp_path):
    write_video(tmp_path / "src" / "long.mp4", moving_square_frames(50, 32, 32))
    write_video(tmp_path / "src" / "short.webm", moving_square_frames(20, 32, 32))
    summary = shard(
        ShardOptions(
            out=str(tmp_path / "out"), sources=[str(tmp_path / "src")], frames=8, size=(16, 16), stride=4, format="mp4"
        ),
        log=quiet,
    )
    # (50 - 8) // 4 + 1 = 11 clips and (20 - 8) // 4 + 1 = 4 clips
    assert summary["splits"]["train"]["count"] == 15
    samples = read_shard_samples(tmp_path / "out" / "train")
    assert all(isinstance(v[0], bytes) for v in samples.values())
    assert read_manifest(tmp_path / "out" / "train")["format"] == "mp4"


def test_splits_are_by_source_video(tmp_path):
    for i in range(10):
        write_video(tmp_path / "src" / f"cam{i}.avi", moving_square_frames(12, seed=i))
    summary = shard(
        ShardOptions(
            out=str(tmp_path / "out"),
            sources=[str(tmp_path / "src")],
            frames=4,
            size=(24, 32),
            split=parse_split("train=0.8,val=0.2"),
        ),
        log=quiet,
    )
    train = read_shard_samples(tmp_path / "out" / "train")
    val = read_shard_samples(tmp_path / "out" / "val")
    train_src = {m["source"] for _, m in train.values()}
    val_src = {m["source"] for _, m in val.values()}
    assert len(train_src) == 8 and len(val_src) == 2 and not train_src & val_src
    assert summary["splits"] == {"train": {"count": 24, "shards": 1}, "val": {"count": 6, "shards": 1}}
    assert parse_split("0.9") == {"train": 0.9, "val": 0.1}
    with pytest.raises(ShardError, match="--split"):
        parse_split("train=lots")


def test_dataset_yaml_sets_splits_and_clip_settings(tmp_path):
    root = tmp_path / "data"
    write_video(root / "videos" / "train" / "t1.avi", moving_square_frames(16, seed=1))
    write_video(root / "videos" / "train" / "t2.avi", moving_square_frames(16, seed=2))
    write_frame_folder(root / "videos" / "val" / "v1", moving_square_frames(16, seed=3))
    (root / "dataset.yaml").write_text(
        yaml.safe_dump(
            {
                "train": "videos/train",
                "val": "videos/val",
                "context_frames": 2,
                "future_frames": 3,
                "frame_size": [12, 16],
                "frame_interval": 2,
                "augment": {"hflip": True},
            }
        )
    )
    summary = shard(ShardOptions(out=str(tmp_path / "out"), dataset=str(root / "dataset.yaml")), log=quiet)
    assert set(summary["splits"]) == {"train", "val"}
    manifest = read_manifest(tmp_path / "out" / "val")
    assert manifest["shape"] == [5, 12, 16, 3] and manifest["interval"] == 2
    assert manifest["augment"] == {"hflip": True}
    assert all("videos/val" in m["source"] for _, m in read_shard_samples(tmp_path / "out" / "val").values())
    (root / "bad.yaml").write_text("train: videos/train\nvalidation: videos/val\n")
    with pytest.raises(ShardError, match=r"bad.yaml: unknown key\(s\) \['validation'\]"):
        shard(ShardOptions(out=str(tmp_path / "o2"), dataset=str(root / "bad.yaml")), log=quiet)
    (root / "list.yaml").write_text("- videos/train\n")
    with pytest.raises(ShardError, match=r"list\.yaml: expected a mapping of keys"):
        shard(ShardOptions(out=str(tmp_path / "o3"), dataset=str(root / "list.yaml")), log=quiet)
    with pytest.raises(ShardError, match="--dataset file not found"):
        shard(ShardOptions(out=str(tmp_path / "o4"), dataset=str(root / "missing.yaml")), log=quiet)


def test_the_output_never_replaces_sources_or_folders_vdp_did_not_write(tmp_path):
    """--out equal to the source folder, inside it, or a folder of other files: refused before any work, nothing
    touched; an earlier output of vdp shard is replaced."""
    src = tmp_path / "videos"
    write_video(src / "a.avi", moving_square_frames(12))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    opts = dict(sources=[str(src)], frames=4, size=(24, 32))
    for out, words in (
        (src, "not a `vdp shard` output: refusing"),
        (src / "shards", "overlaps --source"),
        (notes, "refusing to replace"),
    ):
        with pytest.raises(ShardError, match=words):
            shard(ShardOptions(out=str(out), **opts), log=quiet)
    assert sorted(p.name for p in src.iterdir()) == ["a.avi"] and (notes / "keep.txt").read_text() == "mine"
    out = tmp_path / "shards"
    for _ in range(2):
        assert shard(ShardOptions(out=str(out), **opts), log=quiet)["splits"]["train"]["count"] == 3


def make_messy_source(root: Path) -> Path:
    write_video(root / "good.avi", moving_square_frames(12))
    write_video(root / "short.avi", moving_square_frames(3))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    (root / "session.mp4").write_bytes(SDP)  # FFmpeg's probing would open an RTP session and wait for ever
    (root / "playlist.mkv").write_bytes(b"ffconcat version 1.0\nfile good.avi\n")  # ...or read good.avi's frames
    folder = write_frame_folder(root / "mixed", moving_square_frames(6))
    from PIL import Image

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "frame3.png")
    return root


def test_bad_sources_are_reported_skipped_and_strict_fails(tmp_path):
    src = make_messy_source(tmp_path / "src")
    lines = []
    opts = ShardOptions(
        out=str(tmp_path / "out"), sources=[str(src), str(tmp_path / "missing")], frames=4, size=(24, 32)
    )
    summary = shard(opts, log=lines.append)
    assert summary["splits"]["train"]["count"] == 3  # good.avi: 12 frames -> 3 clips of 4
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"short.avi", "corrupt.mp4", "session.mp4", "playlist.mkv", "mixed", "missing"}
    assert all("not a video we open" in reasons[n] for n in ("session.mp4", "playlist.mkv")), reasons
    assert reasons["short.avi"].startswith("too short: 3 frames, one clip needs 4")
    assert "unreadable video" in reasons["corrupt.mp4"] or "corrupt" in reasons["corrupt.mp4"]
    assert "frames of mixed sizes" in reasons["mixed"]
    assert reasons["missing"] == "does not exist"
    assert all(any(Path(p).name in line for line in lines) for p in reasons), "each skip is printed"
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {Path(s["path"]).name for s in on_disk["skipped"]} == set(reasons)
    split_manifest = read_manifest(tmp_path / "out" / "train")
    assert {Path(s["path"]).name for s in split_manifest["skipped"]} == set(reasons)

    with pytest.raises(ShardError, match="--strict"):
        shard(
            ShardOptions(out=str(tmp_path / "strict"), sources=[str(src)], frames=4, size=(24, 32), strict=True),
            log=quiet,
        )
    assert not (tmp_path / "strict" / "train").exists(), "strict writes no shards"


def test_same_input_and_seed_give_identical_shards_and_no_temporaries(tmp_path):
    for i in range(4):
        write_video(tmp_path / "src" / f"v{i}.avi", moving_square_frames(16, seed=i))

    def digest(out, seed):
        shard(
            ShardOptions(
                out=str(out), sources=[str(tmp_path / "src")], frames=4, size=(12, 16), shard_size=5, seed=seed
            ),
            log=quiet,
        )
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "train").glob("*.tar"))}

    first, again = digest(tmp_path / "a", 0), digest(tmp_path / "b", 0)
    assert first == again and len(first) == 4  # 16 clips in shards of 5
    assert digest(tmp_path / "c", 1) != first, "another seed, another order"
    leftovers = [p.name for p in (tmp_path / "a").rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert not leftovers
    digest(tmp_path / "a", 0)  # re-running over an existing output replaces it cleanly
    assert len(list((tmp_path / "a" / "train").glob("*.tar"))) == 4


def test_moving_digits_shards_are_deterministic(tmp_path):
    opts = dict(synthetic="moving-digits", num_clips=70, frames=6, size=(32, 32), split={"train": 0.9, "val": 0.1})
    shard(ShardOptions(out=str(tmp_path / "a"), **opts), log=quiet)
    shard(ShardOptions(out=str(tmp_path / "b"), **opts), log=quiet)
    a, b = read_shard_samples(tmp_path / "a" / "train"), read_shard_samples(tmp_path / "b" / "train")
    assert len(a) == 63 and len(read_shard_samples(tmp_path / "a" / "val")) == 7
    assert a.keys() == b.keys() and all(np.array_equal(a[k][0], b[k][0]) for k in a)
    clip, meta = next(iter(a.values()))
    assert clip.shape == (6, 32, 32, 1) and 1 <= len(meta["digits"]) <= 3


def test_photo_pans_are_real_photos_in_motion_split_by_photo(tmp_path):
    opts = dict(synthetic="photo-pans", num_clips=48, frames=6, size=(16, 24), split={"train": 0.75, "val": 0.25})
    summary = shard(ShardOptions(out=str(tmp_path / "pans"), **opts), log=quiet)
    train, val = read_shard_samples(tmp_path / "pans" / "train"), read_shard_samples(tmp_path / "pans" / "val")
    assert len(train) + len(val) == 48 and len(val) == 12
    photos = {split: {m["photo"] for _, m in clips.values()} for split, clips in (("train", train), ("val", val))}
    assert len(photos["val"]) == 4 and not photos["train"] & photos["val"], "held-out photos, never held-out clips"
    manifest = read_manifest(tmp_path / "pans" / "val")
    assert manifest["sources"][0]["photos"] == sorted(photos["val"], key=manifest["sources"][0]["photos"].index)
    assert manifest["shape"] == [6, 16, 24, 3] and summary["splits"]["train"]["count"] == 36
    moving = [(c, m) for c, m in train.values() if not m["still"]]
    assert moving and all(np.abs(np.diff(c.astype(int), axis=0)).mean() > 0.5 for c, _ in moving)  # the camera moves
    for clip, meta in train.values():
        assert clip.std() > 5, "real texture, not a flat frame"
        if meta["still"]:  # a still camera: only the sensor noise (1 grey level) changes
            assert 0 < np.abs(clip.astype(int) - clip[:1]).mean() < 2
    still = shard(
        ShardOptions(
            out=str(tmp_path / "still"),
            synthetic="photo-pans",
            num_clips=8,
            frames=4,
            size=(16, 16),
            still=True,
            sprites=(1, 1),
            grayscale=True,
            noise=0.0,
        ),
        log=quiet,
    )
    assert still["splits"]["train"]["count"] == 8
    for clip, meta in read_shard_samples(tmp_path / "still" / "train").values():
        assert clip.shape == (4, 16, 16, 1) and meta["still"] and len(meta["sprites"]) == 1
        changed = (clip[1:] != clip[:1]).any(0).mean()
        assert 0 < changed < 0.5, "only the sprite moves over a still photo"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(), "nothing to shard"),
        (dict(synthetic="photo-pans", sprites=(2, 1)), "--sprites"),
        (dict(synthetic="moving-digits", still=True), "photo-pans options"),
        (dict(synthetic="photo-pans", noise=-1.0), "--noise"),
        (dict(synthetic="moving-digits", format="gif"), "--format 'gif'"),
        (dict(synthetic="moving-digits", stride=0), "--stride must be >= 1"),
        (dict(synthetic="moving-digits", split={"train": 0.5, "val": 0.2}), "summing to 1"),
        (dict(synthetic="moving-digits", resize="zoom"), "--resize 'zoom'"),
        (dict(synthetic="moving-digits", format="mp4", size=(33, 32)), "even --size"),
    ],
)
def test_bad_options_are_named(tmp_path, kwargs, message):
    with pytest.raises(ShardError, match=message):
        shard(ShardOptions(out=str(tmp_path / "o"), **kwargs), log=quiet)


def test_cli_reports_and_strict_exit_code(tmp_path, capsys):
    """`vdp shard` through the CLI's own entry point, in this process (on the session's Ray)."""
    from vdp_ray.cli import main

    src = make_messy_source(tmp_path / "src")
    base = ["shard", "--source", str(src), "--out", str(tmp_path / "out"), "--frames", "4", "--size", "24", "32"]
    assert main(base) == 0
    printed = capsys.readouterr()
    assert "wrote train 3 clips in 1 shard(s)" in printed.out and "skipped 5 source(s)" in printed.out
    assert "short.avi: too short" in printed.out and "skipped" in printed.err  # the summary, and the live log
    assert main([*base, "--strict"]) == 1
    assert "--strict" in capsys.readouterr().err
