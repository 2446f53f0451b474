import numpy as np
import pytest
from support.videos import moving_square_frames, write_frame_folder, write_video

from vdp_ray.data.codec import decode_clip, encode_clip
from vdp_ray.data.sources import (
    ClipSpec,
    SourceError,
    discover,
    fit_frame,
    folder_frames,
    natural_key,
    sliding_clips,
    video_frames,
)


@pytest.mark.parametrize(
    ("stride", "interval", "expected"),
    [
        (3, 1, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),
        (4, 2, [[0, 2, 4], [4, 6, 8]]),
        (1, 3, [[0, 3, 6], [1, 4, 7], [2, 5, 8], [3, 6, 9]]),
        (5, 3, [[0, 3, 6]]),
    ],
)
def test_sliding_window_takes_every_clip(stride, interval, expected):
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(10)]
    spec = ClipSpec(frames=3, size=(4, 4), stride=stride, interval=interval, resize="stretch")
    clips = list(sliding_clips(frames, spec))
    assert [c[:, 0, 0, 0].tolist() for _, c in clips] == expected
    assert [s for s, _ in clips] == [e[0] for e in expected]


def test_fit_frame_modes():
    frame = np.zeros((20, 40, 3), np.uint8)
    frame[:, :6] = 255  # a white band at the left edge of a 2:1 frame
    crop = fit_frame(frame, ClipSpec(1, (16, 16), 1, resize="crop"))
    assert crop.shape == (16, 16, 3) and crop.max() == 0, "the centre square holds no white"
    pad = fit_frame(frame, ClipSpec(1, (16, 16), 1, resize="pad"))
    assert pad[:4].max() == 0 and pad[-4:].max() == 0 and pad[8, 0, 0] == 255, "letterboxed, content kept"
    stretch = fit_frame(frame, ClipSpec(1, (16, 16), 1, resize="stretch"))
    assert stretch[:, :1].min() > 200, "the whole width is kept"
    gray = fit_frame(frame, ClipSpec(1, (20, 40), 1, grayscale=True))
    assert gray.shape == (20, 40, 1)
    assert np.array_equal(fit_frame(frame, ClipSpec(1, (20, 40), 1)), frame), "same size is exact"


def test_discover_finds_videos_and_frame_folders(tmp_path):
    frames = moving_square_frames(4)
    write_video(tmp_path / "vids" / "a.mp4", frames)
    write_video(tmp_path / "vids" / "nested" / "b.avi", frames)
    (tmp_path / "vids" / "notes.txt").write_text("not a video")
    write_frame_folder(tmp_path / "frames" / "clip2", frames)
    write_frame_folder(tmp_path / "frames" / "clip10", frames)
    (tmp_path / "empty").mkdir()
    sources, skipped = discover([tmp_path / "vids", tmp_path / "frames", tmp_path / "empty", tmp_path / "nope"])
    assert [(s.kind, s.path.split("/")[-1]) for s in sources] == [
        ("video", "a.mp4"),
        ("video", "b.avi"),
        ("frames", "clip2"),
        ("frames", "clip10"),
    ]
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in skipped}
    assert reasons == {"empty": "empty source: no video files or frame folders found", "nope": "does not exist"}


def test_frame_folders_use_natural_order_and_refuse_mixed_sizes(tmp_path):
    frames = moving_square_frames(12)
    folder = write_frame_folder(tmp_path / "clip", frames)
    assert np.array_equal(np.stack(list(folder_frames(str(folder)))), frames)
    assert natural_key("frame10.png") > natural_key("frame9.png")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "frame5.png")
    with pytest.raises(SourceError, match=r"frames of mixed sizes: frame0\.png is 32x24, frame5\.png is 8x8"):
        list(folder_frames(str(folder)))


def test_unreadable_and_corrupt_videos_raise_source_errors(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="unreadable video"):
        frames, _ = video_frames(str(junk))
        list(frames)
    good = write_video(tmp_path / "good.mp4", moving_square_frames(30))
    cut = tmp_path / "cut.mp4"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 3])  # truncated: the index (moov) is missing
    with pytest.raises(SourceError):
        frames, _ = video_frames(str(cut))
        list(frames)


def test_only_real_containers_are_opened_never_by_probing(tmp_path):
    """Texts FFmpeg would open as an RTP session (blocking for ever) or as a playlist of local files are refused
    from their first bytes, for sources, inside shards (an .mp4 clip) and for uploads alike."""
    from support.hostile import SDP

    from vdp_ray.containers import ContainerError, container_format
    from vdp_ray.data.codec import decode_mp4, encode_mp4

    good = write_video(tmp_path / "good.avi", moving_square_frames(6))
    playlist = tmp_path / "list.mp4"
    playlist.write_bytes(f"ffconcat version 1.0\nfile {good}\n".encode())
    for path, text in ((playlist, None), (tmp_path / "rtp.mkv", SDP)):
        if text:
            path.write_bytes(text)
        with pytest.raises(SourceError, match=f"{path.name}: not a video we open"):
            video_frames(str(path))
    with pytest.raises(ContainerError, match="not an mp4"):
        decode_mp4(SDP)
    clip = moving_square_frames(4, 16, 16)
    assert decode_mp4(encode_mp4(clip, 4.0)).shape == clip.shape
    assert container_format(good.read_bytes()[:16]) == "avi"
    for ext, fmt in ((".mkv", "matroska"), (".webm", "matroska"), (".mov", "mp4"), (".mp4", "mp4")):
        assert container_format(write_video(tmp_path / f"v{ext}", clip).read_bytes()[:16]) == fmt


@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_lossless_videos_decode_exactly(tmp_path, ext):
    frames = moving_square_frames(6)
    got, fps = video_frames(str(write_video(tmp_path / f"v{ext}", frames, fps=12)))
    assert np.array_equal(np.stack(list(got)), frames) and fps == 12


def test_clip_codecs():
    clip = moving_square_frames(8, 32, 32)
    assert np.array_equal(decode_clip(encode_clip(clip, "npy"), "npy"), clip)
    smooth = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :, None], (8, 32, 32, 3)).copy()
    smooth[:, 10:20, 10:20] = 200
    back = decode_clip(encode_clip(smooth, "mp4", 10), "mp4")
    assert back.shape == smooth.shape and np.abs(back.astype(int) - smooth).mean() < 3, "lossy but close"
    gray = clip[..., :1]
    assert decode_clip(encode_clip(gray, "mp4"), "mp4", channels=1).shape == gray.shape
    with pytest.raises(ValueError, match="even frame size"):
        encode_clip(moving_square_frames(2, 15, 32), "mp4")
    with pytest.raises(ValueError, match="uint8"):
        encode_clip(clip.astype(np.float32), "npy")
