"""Captions: caption files in every supported form, sidecars, moving-digits captions, captions in shards."""

import json
import tarfile

import numpy as np
import pytest
from support.videos import gray_frames

from vdp_ray.data.captions import CaptionError, captions_for, describe_digits, direction, load_captions
from vdp_ray.data.moving_digits import moving_digits_clip


def test_csv_json_list_and_msrvtt_caption_files_give_the_same_table(tmp_path):
    (tmp_path / "c.csv").write_text("Video,Caption\nvideo0.mp4,a dog runs\nvideo0.mp4,  a   dog\tplays \nvideo1,\n")
    (tmp_path / "m.json").write_text(json.dumps({"video0.mp4": ["a dog runs", "a dog plays"]}))
    (tmp_path / "l.json").write_text(
        json.dumps([{"video": "video0", "caption": "a dog runs"}, {"file": "video0", "text": "a dog plays"}])
    )
    sentences = [{"video_id": "video0", "caption": c, "sen_id": i} for i, c in enumerate(["a dog runs", "a dog plays"])]
    msrvtt = {"videos": [{"video_id": "video0"}], "sentences": sentences}
    (tmp_path / "msrvtt.json").write_text(json.dumps(msrvtt))
    tables = [load_captions(tmp_path / n) for n in ("c.csv", "m.json", "l.json", "msrvtt.json")]
    for table in tables:  # names normalise to the file name or stem; blank captions are dropped
        assert captions_for(str(tmp_path / "video0.mp4"), "video", table) == ["a dog runs", "a dog plays"]
        assert captions_for(str(tmp_path / "video1.mp4"), "video", table) == []


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("x.csv", "file,label\na.mp4,cat\n", "the header needs a video column"),
        ("x.json", "{not json", "not valid JSON"),
        ("x.json", "[1, 2]", "[0]: expected {video, caption}"),
        ("x.json", '{"a.mp4": 3}', "key 'a.mp4': expected a video name and a caption string"),
        ("x.json", "{}", "no captions found"),
        ("x.txt", "a dog", "expected a .csv or .json file"),
    ],
)
def test_a_bad_caption_file_is_refused_naming_the_file_and_what_was_expected(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    with pytest.raises(CaptionError) as err:
        load_captions(tmp_path / name)
    assert expected in str(err.value) and name in str(err.value)


def test_a_sidecar_wins_over_the_mapping_and_frame_folders_have_two_sidecar_forms(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "clip.txt").write_text("from the sidecar\n\nsecond line\n")
    table = {"clip.mp4": ["from the mapping"]}
    assert captions_for(str(tmp_path / "clip.mp4"), "video", table) == ["from the sidecar", "second line"]
    (tmp_path / "frames_a").mkdir()
    (tmp_path / "frames_a.txt").write_text("beside the folder")
    (tmp_path / "frames_b").mkdir()
    (tmp_path / "frames_b" / "captions.txt").write_text("inside the folder")
    assert captions_for(str(tmp_path / "frames_a"), "frames", None) == ["beside the folder"]
    assert captions_for(str(tmp_path / "frames_b"), "frames", None) == ["inside the folder"]


def test_moving_digit_captions_name_the_digits_and_their_directions():
    assert direction([0.5, -3.0]) == "left" and direction([3.0, 1.0]) == "down" and direction([-2, 1]) == "up"
    assert describe_digits([3, 7], [[0.1, -3.0], [2.5, 0.3]]) == [
        "a 3 moving left and a 7 moving down",
        "the digits 3 and 7",
    ]
    assert (
        describe_digits([1, 2, 5], [[0, 1], [0, 1], [1, 0]])[0]
        == "a 1 moving right, a 2 moving right and a 5 moving down"
    )
    # a real clip's caption agrees with how its digit moves over its first frames (clear-cut directions)
    checked = 0
    for index in range(40):
        clip, meta = moving_digits_clip(index, 0, 4, (64, 64), (1, 1))
        vy, vx = meta["velocity_yx"][0]
        if max(abs(vy), abs(vx)) < 2 * min(abs(vy), abs(vx)):
            continue
        d_y, d_x = np.argwhere(clip[3][..., 0] > 64).mean(0) - np.argwhere(clip[0][..., 0] > 64).mean(0)
        if abs(d_y - 3 * vy) > 2 or abs(d_x - 3 * vx) > 2:  # bounced off a wall in between
            continue
        seen = ("down" if d_y > 0 else "up") if abs(d_y) > abs(d_x) else ("right" if d_x > 0 else "left")
        assert describe_digits(meta["digits"], meta["velocity_yx"])[0] == f"a {meta['digits'][0]} moving {seen}"
        checked += 1
    assert checked >= 5


def test_shards_carry_captions_from_sidecars_and_a_mapping_and_digits_are_captioned(tmp_path, ray_local):
    import av

    from vdp_ray.data.shards import ShardOptions, read_manifest, shard

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "b", "c"):
        with av.open(str(videos / f"{name}.mp4"), "w") as out:
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for frame in gray_frames(8, 32, 32):
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.repeat(frame, 3, -1), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    (videos / "a.txt").write_text("a sidecar caption\n")
    (tmp_path / "caps.csv").write_text("video,caption\nb.mp4,a mapped caption\nb.mp4,another\n")
    lines = []
    shard(
        ShardOptions(
            out=str(tmp_path / "out"),
            sources=[str(videos)],
            frames=8,
            size=(32, 32),
            captions=str(tmp_path / "caps.csv"),
        ),
        log=lines.append,
    )
    assert any("1 of 3 source(s) have no captions" in x for x in lines)
    manifest = read_manifest(tmp_path / "out" / "train")
    assert manifest["captioned"] == 2 and manifest["count"] == 3
    metas = {}
    with tarfile.open(tmp_path / "out" / "train" / "shard-000000.tar") as tar:
        for m in tar:
            if m.name.endswith(".json"):
                meta = json.loads(tar.extractfile(m).read())
                metas[meta["source"].rsplit("/", 1)[-1]] = meta.get("captions")
    assert metas == {"a.mp4": ["a sidecar caption"], "b.mp4": ["a mapped caption", "another"], "c.mp4": None}

    shard(
        ShardOptions(
            out=str(tmp_path / "digits"), synthetic="moving-digits", num_clips=4, frames=4, size=(32, 32), digits=(2, 2)
        ),
        log=lambda *_: None,
    )
    with tarfile.open(tmp_path / "digits" / "train" / "shard-000000.tar") as tar:
        meta = next(json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json"))
    a, b = meta["digits"]
    assert meta["captions"][1] == f"the digits {a} and {b}" and meta["captions"][0].startswith(f"a {a} moving ")
