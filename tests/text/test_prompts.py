"""Prompts where a user meets them: the Predictor, `vdp predict --prompt`, the HTTP API's prompt field."""

import json
import shutil

import numpy as np
import pytest
from support.exports import dit_export, text_dit_export

from vdp_ray.cli import main
from vdp_ray.predict import PredictError, Predictor
from vdp_ray.serve.api import ApiError, Limits, parse_params
from vdp_ray.text import make_word_encoder

CAPTIONS = ["a 3 moving left", "a 7 moving down", "the digits 3 and 7"]


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    encoder = make_word_encoder(root / "encoder", CAPTIONS, dim=64)
    export = text_dit_export(root, encoder)
    shutil.rmtree(encoder)  # the export carries its own copy of the encoder
    return export


def test_a_text_model_generates_from_a_prompt_and_each_clip_can_have_its_own(text_export):
    p = Predictor.from_export(text_export, device="cpu")
    assert p.info()["text"] is True and p.info()["defaults"]["text_guidance"] == 1.0
    a = p.generate(batch=1, seed=0, prompt="a 3 moving left")
    again = p.generate(batch=1, seed=0, prompt="a 3 moving left")
    b = p.generate(batch=1, seed=0, prompt="a 7 moving down")
    assert a.shape == (8, 32, 32, 1) and np.array_equal(a, again) and not np.array_equal(a, b)
    both = p.generate(batch=2, seed=0, prompt=["a 3 moving left", "a 7 moving down"])
    assert both.shape == (2, 8, 32, 32, 1)
    guided = p.generate(batch=1, seed=0, prompt="a 3 moving left", text_guidance=4.0)
    assert not np.array_equal(guided, a)  # the null-text branch now pulls the other way
    future = p.predict(a[:2], 6, seed=0, prompt="a 3 moving left", guidance=2.0, text_guidance=3.0)
    assert future.shape == (6, 32, 32, 1)
    with pytest.raises(PredictError, match=r"prompt: one string, or one per clip \(2\)"):
        p.generate(batch=2, seed=0, prompt=["only one"])
    with pytest.raises(PredictError, match=r"text_guidance: must be in \[0, 50\]"):
        p.generate(seed=0, prompt="x", text_guidance=99)


def test_a_model_without_text_refuses_a_prompt(tmp_path):
    p = Predictor.from_export(dit_export(tmp_path), device="cpu")
    assert p.info()["text"] is False
    with pytest.raises(PredictError, match="prompt: this model was trained without text"):
        p.generate(seed=0, prompt="a 3")


def test_vdp_predict_takes_a_prompt_and_records_it(text_export, tmp_path, capsys):
    out = tmp_path / "gen.gif"
    args = ["--task", "generate", "--prompt", "a 7 moving down", "--text-guidance", "2", "--seed", "1", "--steps", "2"]
    code = main(["predict", "--checkpoint", str(text_export), *args, "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["prompt"] == "a 7 moving down" and record["text_guidance"] == 2.0 and out.is_file()


def test_the_http_prompt_field_is_checked_against_the_model():
    limits = Limits()
    text_model = {"frames": 8, "max_context": 4, "temporal_compression": 2, "text": True}
    p = parse_params("generate", {"prompt": "  A 3   moving Left ", "text_guidance": "2.5"}, limits, text_model)
    assert p.prompt == "A 3 moving Left" and p.text_guidance == 2.5  # whitespace tidied, case kept
    assert p.sampling()["text_guidance"] == 2.5
    for raw, field, message in [
        ({"prompt": "a 3"}, "prompt", "trained without text"),
        ({"text_guidance": "2"}, "text_guidance", "trained without text"),
    ]:
        with pytest.raises(ApiError) as err:
            parse_params("generate", raw, limits, {**text_model, "text": False})
        assert err.value.status == 422 and err.value.field == field and message in err.value.message
    with pytest.raises(ApiError) as err:
        parse_params("generate", {"prompt": "x" * 2001}, limits, text_model)
    assert err.value.field == "prompt" and "at most 2000" in err.value.message
    with pytest.raises(ApiError) as err:
        parse_params("generate", {"text_guidance": "99"}, limits, text_model)
    assert err.value.field == "text_guidance"


def test_vdp_evaluate_prompts_a_text_model_with_each_clips_caption(text_export, digits, tmp_path):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(text_export),
            "--shards",
            str(digits / "val"),
            "--clips",
            "2",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--cpus-per-worker",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["prompts"].startswith("each clip's first caption") and metrics["model"]["text"]
    assert metrics["protocol"]["clips"] == 2 and np.isfinite(metrics["psnr"])


def test_a_served_batch_gives_each_request_its_own_prompt(text_export):
    from vdp_ray.serve.api import Params
    from vdp_ray.serve.model import Job, Model

    replica = Model.func_or_class.__new__(Model.func_or_class)  # the deployment's class, without Serve
    replica.predictor = p = Predictor.from_export(text_export, device="cpu")
    jobs = [
        Job(Params(task="generate", frames=8, batch=b, seed=5, steps=2, prompt=prompt), None)
        for b, prompt in ((1, "a 3 moving left"), (2, "a 7 moving down"))
    ]
    outs = replica._run_group(jobs)
    expected = p.generate(8, batch=3, seed=5, steps=2, prompt=["a 3 moving left"] + ["a 7 moving down"] * 2)
    assert np.array_equal(outs[0], expected[0]) and np.array_equal(outs[1], expected[1:])
