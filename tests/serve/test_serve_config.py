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
    p = parse_params(
        "predict", {"context": "2", "future": 5, "steps": "10", "seed": "3", "format": "NPZ"}, limits, MODEL
    )
    assert (p.context, p.future, p.steps, p.seed, p.format) == (2, 5, 10, 3, "npz")
    assert parse_params("generate", {}, limits, MODEL).frames == 6
    for raw, field in (
        ({"steps": "1.5"}, "steps"),
        ({"steps": "nan"}, "steps"),
        ({"future": True}, "future"),
        ({"guidance": "-1"}, "guidance"),
        ({"resize": "maybe"}, "resize"),
        ({"between": 2}, "between"),
        ({"context": 4}, "context"),
        ({"seed": -1}, "seed"),
    ):
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


def test_one_declaration_makes_the_command_lines_and_the_http_fields():
    """`vdp predict`, `vdp evaluate` and every HTTP route take the same sampling fields (request.Sampling); each
    route takes its own task's fields and no other task's; the OpenAPI schema types them with their choices."""
    import argparse
    from dataclasses import fields

    from vdp_ray.cli.predict import PredictOptions
    from vdp_ray.evaluate import EvalOptions
    from vdp_ray.options import add_arguments, from_args
    from vdp_ray.request import Sampling
    from vdp_ray.serve.api import schema
    from vdp_ray.vocab import SAMPLERS

    line = ["--sampler", "heun", "--steps", "3", "--guidance", "2", "--text-guidance", "1.5", "--seed", "7"]
    for cls, required in (
        (PredictOptions, ["--checkpoint", "x", "--out", "y.gif"]),
        (EvalOptions, ["--checkpoint", "x", "--shards", "z"]),
    ):
        parser = argparse.ArgumentParser()
        add_arguments(parser, cls)
        o = from_args(cls, parser.parse_args(required + line))
        assert o.sampling() == {"sampler": "heun", "steps": 3, "guidance": 2.0, "text_guidance": 1.5} and o.seed == 7
        assert from_args(cls, parser.parse_args(required)).seed == 0  # reproducible by default, unlike HTTP
    own = {
        "predict": {"context", "future"},
        "generate": {"frames", "batch"},
        "interpolate": {"between"},
        "refine": {"strength"},
    }
    for task, names in own.items():
        props = schema(task)
        assert {f.name for f in fields(Sampling)} <= set(props) and names <= set(props)
        assert not (set().union(*own.values()) - names) & set(props), task
        assert props["sampler"] == {"type": "string", "enum": list(SAMPLERS)} and props["steps"] == {"type": "integer"}
        assert props["format"]["enum"] == ["gif", "mp4", "npz", "json"] and props["resize"] == {"type": "boolean"}


def test_work_is_counted_by_the_predictor_and_refused_before_it_queues_and_sampling_stops_at_its_deadline(tmp_path):
    """A request's compute (windows x steps x evaluations per step x guidance branches x clips) is counted by the
    Predictor that would sample it and refused past the budget by the replica before it queues, naming the fields;
    a started sampling call stops at the first step after its deadline (the replica's check between steps)
    instead of running on for clients that are gone."""
    import asyncio
    import time

    from support.exports import unet_export

    from vdp_ray.predict import Predictor
    from vdp_ray.serve.api import check_work
    from vdp_ray.serve.model import Deadline, Job, Model, _stop_after

    predictor = Predictor.from_export(unet_export(tmp_path))  # 6 frames, up to 3 given, 4 steps by default
    info, limits = predictor.info(), Limits(max_frames=64, max_steps=50)
    p = parse_params("predict", {"future": 12, "steps": 20, "context": 3}, limits, info)
    assert predictor.evaluations(p) == 4 * 20  # 12 frames, 3 new per window: 4 windows
    heavy = parse_params("predict", {"future": 12, "steps": 20, "sampler": "heun", "guidance": 2}, limits, info)
    assert predictor.evaluations(heavy) == 4 * 20 * 2 * 2  # Heun: two evaluations per step; guidance: two branches
    g = parse_params("generate", {"batch": 4, "frames": 12}, limits, info)  # 1 + 6 more frames / 3 per window
    assert predictor.evaluations(g) == 3 * 4 * 4
    assert predictor.evaluations(parse_params("refine", {"strength": "0.5", "steps": 10}, limits, info)) == 5
    check_work(p, 80, 0.01, 1.0)  # ~0.8 s
    replica = Model.func_or_class.__new__(Model.func_or_class)  # the deployment's class, without Serve
    replica.predictor, replica.eval_s = predictor, 0.01
    err = asyncio.run(replica(Job(heavy, None, work_s=1.0)))
    assert isinstance(err, ApiError) and err.status == 422 and err.field == "steps,future"
    assert "about 320 network evaluations" in err.message and "fewer steps, future" in err.message

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
