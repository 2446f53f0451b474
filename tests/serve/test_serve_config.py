"""The shipped Serve config (cluster/serve.yaml) validates against Ray Serve's own schema and builds the same
application `vdp serve` runs; the request-side checks hold without a server."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support.videos import gray_frames, png, zip_of

from vdp_ray.serve.api import ApiError, Limits, parse_params
from vdp_ray.serve.responses import encode
from vdp_ray.serve.uploads import decode_clip, decode_json_frames

ROOT = Path(__file__).resolve().parents[2]
MODEL = {"frames": 6, "size": [16, 16], "channels": 1, "max_context": 3, "temporal_compression": 1}


def test_cluster_serve_config_validates_and_builds(monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from vdp_ray.serve.app import app_builder

    doc = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else None
    schema = schema or ServeDeploySchema.parse_obj(doc)
    app = schema.applications[0]
    assert app.import_path == "vdp_ray.serve.app:app_builder"
    monkeypatch.setenv(app.args["api_key_env"], "k")
    # built as on the GPU cluster it is written for (a GPU reservation is refused where there are none)
    monkeypatch.setattr("vdp_ray.serve.options.cluster_has_gpus", lambda: True)
    built = app_builder(app.args)
    assert type(built).__name__ == "Application"


def test_parameters_are_typed_and_bounded():
    limits = Limits(max_frames=64, max_steps=50)
    p = parse_params("predict", {"context": "2", "future": 5, "steps": "10", "seed": "3", "format": "NPZ"}, limits,
                     MODEL)  # fmt: skip
    assert (p.context, p.future, p.steps, p.seed, p.format) == (2, 5, 10, 3, "npz")
    assert parse_params("generate", {}, limits, MODEL).frames == 6
    for raw, field in (({"steps": "1.5"}, "steps"), ({"steps": "nan"}, "steps"), ({"future": True}, "future"),
                       ({"guidance": "-1"}, "guidance"), ({"resize": "maybe"}, "resize"), ({"between": 2}, "between"),
                       ({"context": 4}, "context"), ({"seed": -1}, "seed")):  # fmt: skip
        with pytest.raises(ApiError) as err:
            parse_params("predict", raw, limits, MODEL)
        assert err.value.field == field and 400 <= err.value.status < 500, raw


def test_clips_decode_from_zips_images_and_json_and_encode_back():
    frames = gray_frames(12)
    assert np.array_equal(decode_clip(zip_of(frames), Limits()), frames)  # frame_10 after frame_9
    assert decode_clip(png(frames[0]), Limits()).shape == (1, 16, 16, 1)
    import base64

    b64 = [base64.b64encode(png(f)).decode() for f in frames[:3]]
    assert np.array_equal(decode_json_frames(["data:image/png;base64," + b64[0], *b64[1:]], Limits()), frames[:3])
    with pytest.raises(ApiError, match="pixels"):
        decode_clip(zip_of(frames), Limits(max_pixels=100))
    body = encode(frames[3:6], frames[:3], frames[3:5], "npz", 4.0, {})
    import io

    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        assert z["frames"].shape == (3, 16, 16, 1) and z["truth"].shape == (2, 16, 16, 1)
    assert encode(frames[3:6], frames[:3], frames[3:5], "gif", 4.0, {})[:6] == b"GIF89a"


def test_work_is_estimated_and_bounded_and_sampling_stops_at_its_deadline(tmp_path):
    """A request's compute (windows x steps x evaluations per step x guidance branches x clips) is estimated when
    it is parsed and refused past the budget, naming the fields; a started sampling call stops at the first step
    after its deadline (the replica's check between steps) instead of running on for clients that are gone."""
    import time

    from support.exports import unet_export

    from vdp_ray.predict import Predictor
    from vdp_ray.serve.api import check_work, work
    from vdp_ray.serve.model import Deadline, _stop_after

    info = {**MODEL, "defaults": {"sampler": "ddim", "steps": 10, "guidance": 1.0}, "eval_s": 0.01}
    limits = Limits(max_frames=64, max_steps=50)
    p = parse_params("predict", {"future": 12, "steps": 20, "context": 3}, limits, info)
    assert work(p, info) == (4 * 20, ["steps", "future"])  # 12 frames, 3 new per window: 4 windows
    heavy = parse_params("predict", {"future": 12, "steps": 20, "sampler": "heun", "guidance": 2}, limits, info)
    assert work(heavy, info)[0] == 4 * 20 * 2 * 2  # Heun: two evaluations per step; guidance: two branches
    check_work(p, info, 1.0)  # ~0.8 s
    with pytest.raises(ApiError) as err:
        check_work(heavy, info, 1.0)
    assert err.value.status == 422 and err.value.field == "steps,future" and "fewer steps, future" in err.value.message
    g = parse_params("generate", {"batch": 4, "frames": 12}, limits, info)  # 1 + 6 more frames / 3 per window
    assert work(g, info) == (3 * 10 * 4, ["steps", "frames", "batch"])

    predictor = Predictor.from_export(unet_export(tmp_path))
    seen, stop = [], _stop_after(time.monotonic() - 1)

    def progress(i, n):
        seen.append(i)
        stop(i, n)

    with pytest.raises(Deadline):
        predictor.generate(steps=50, progress=progress)
    assert seen == [1]


def test_a_server_reachable_from_other_machines_needs_a_key_or_insecure(tmp_path):
    from vdp_ray.options import OptionError
    from vdp_ray.serve.options import ServeOptions

    for host in ("0.0.0.0", "192.168.1.5", "::", "myhost"):
        with pytest.raises(OptionError, match="set --api-key-env NAME, or pass --insecure"):
            ServeOptions(export=str(tmp_path), host=host).check()
        ServeOptions(export=str(tmp_path), host=host, insecure=True).check()
        ServeOptions(export=str(tmp_path), host=host, api_key_env="KEY").check()
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        ServeOptions(export=str(tmp_path), host=host).check()
    assert ServeOptions(export="x", host="0.0.0.0", insecure=True).trusted_hosts() is None
    hosts = ServeOptions(export="x", host="0.0.0.0", insecure=True, allowed_hosts="Box.lan, proxy").trusted_hosts()
    assert hosts == {"localhost", "127.0.0.1", "::1", "0.0.0.0", "box.lan", "proxy"}


def test_vdp_serve_refuses_bad_options_before_starting(tmp_path):
    """The real command in a subprocess: refused with exit 2 and the option named, before Ray starts."""
    run = [sys.executable, "-m", "vdp_ray.cli", "serve"]
    proc = subprocess.run([*run, "--checkpoint", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "missing" in proc.stderr
    proc = subprocess.run([*run, "--checkpoint", str(tmp_path), "--autoscale", "3:1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--autoscale" in proc.stderr
