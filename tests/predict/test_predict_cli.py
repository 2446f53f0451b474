"""`vdp predict` end to end on small video files and frame folders: outputs written, every bad input named."""

import json

import numpy as np
import pytest
from PIL import Image

from vdp_ray.cli import main
from vdp_ray.media import read_frames


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    from support import videos as media

    from vdp_ray.data.moving_digits import moving_digits_clip

    root = tmp_path_factory.mktemp("clips")
    gray, _ = moving_digits_clip(0, 3, 10, (16, 16), (1, 1))
    rgb = np.repeat(gray, 3, axis=-1)
    return {
        "avi": media.write_video(root / "digits.avi", rgb),  # lossless
        "mp4": media.write_video(root / "digits.mp4", rgb),
        "big": media.write_video(root / "big.avi", media.moving_square_frames(10, 24, 32)),
        "folder": media.write_frame_folder(root / "frames", rgb),
        "frames": gray,
    }


def run(capsys, *args):
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_writes_video_strip_and_record(unet_export, clip_files, tmp_path, capsys):
    out = tmp_path / "pred.gif"
    code, stdout, err = run(
        capsys,
        "predict",
        "--checkpoint",
        unet_export,
        "--input",
        clip_files["avi"],
        "--context",
        3,
        "--future",
        5,
        "--steps",
        2,
        "--seed",
        1,
        "--out",
        out,
    )
    assert code == 0, err
    assert "predict: 5 frame(s)" in stdout
    assert "sampling steps: 4/4 (100%)" in err  # 2 windows of 3 new frames x 2 steps, with progress lines
    gif = Image.open(out)
    durations = []
    for i in range(gif.n_frames):  # GIF writers merge repeated frames into longer ones: count the time
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert sum(durations) == 8 * 100  # 3 given + 5 predicted, at the input video's 10 fps
    strip = np.asarray(Image.open(tmp_path / "pred.png"))
    # two rows (prediction, truth) of 8 enlarged 16 px frames (x8 = 128 px) with 2 px gaps
    assert strip.shape == (2 * 128 + 2, 8 * 130 - 2, 3)
    record = json.loads((tmp_path / "pred.json").read_text())
    assert record["task"] == "predict" and record["seed"] == 1 and record["steps"] == 2
    # the output starts with the input's first frame, enlarged 8x (grey input read from an RGB video, lossless)
    first, _ = read_frames(out, 0, 1)
    assert np.array_equal(first[0, ::8, ::8, 0], clip_files["frames"][0, :, :, 0])


@pytest.mark.parametrize("source", ["mp4", "folder"])
def test_predict_reads_videos_and_frame_folders(unet_export, clip_files, tmp_path, capsys, source):
    code, _, err = run(
        capsys,
        "predict",
        "--checkpoint",
        unet_export,
        "--input",
        clip_files[source],
        "--steps",
        1,
        "--out",
        tmp_path / "o.mp4",
    )
    assert code == 0, err
    frames, _ = read_frames(tmp_path / "o.mp4")
    assert len(frames) == 6  # defaults: 2 given (data.context_frames) + 4 (the rest of the window)


@pytest.mark.parametrize("task", ["generate", "interpolate", "refine"])
def test_other_tasks(unet_export, clip_files, tmp_path, capsys, task):
    code, stdout, err = run(
        capsys,
        "predict",
        "--task",
        task,
        "--checkpoint",
        unet_export,
        "--input",
        clip_files["avi"],
        "--steps",
        1,
        "--between",
        3,
        "--out",
        tmp_path / f"{task}.gif",
    )
    assert code == 0, err
    assert (tmp_path / f"{task}.png").is_file()
    made = {"generate": 6, "interpolate": 3, "refine": 6}[task]
    assert f"{task}: {made} frame(s)" in stdout


def test_resize_adapts_other_sizes_and_colour(unet_export, clip_files, tmp_path, capsys):
    args = [
        "predict",
        "--checkpoint",
        unet_export,
        "--input",
        clip_files["big"],
        "--steps",
        1,
        "--out",
        tmp_path / "r.gif",
    ]
    code, _, err = run(capsys, *args)
    assert code == 2 and "frames are 24x32; this model takes 16x16" in err and "--resize" in err
    code, _, err = run(capsys, *args, "--resize")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "MISSING"], "no such file or folder"),
        (["--context", 20], "10 frame(s) from --start 0; --context 20 needs 20"),
        (["--start", 9, "--context", 2], "1 frame(s) from --start 9; --context 2 needs 2"),
        (["--steps", 0], "--steps: must be a positive integer, got 0"),
        (["--out", "x.png"], "expected a .gif or .mp4"),
        (["--checkpoint", "NOPE"], "no such export folder"),
    ],
)
def test_bad_input_exits_2_with_a_message(unet_export, clip_files, tmp_path, capsys, args, message):
    base = {"--checkpoint": unet_export, "--input": clip_files["avi"], "--out": tmp_path / "o.gif"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value if value not in ("MISSING", "NOPE") else tmp_path / value
        if flag == "--out":
            base[flag] = tmp_path / value
    flat = [x for kv in base.items() for x in kv]
    code, _, err = run(capsys, "predict", *flat)
    assert code == 2
    assert message in err, err
