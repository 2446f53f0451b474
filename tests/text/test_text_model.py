"""The local text encoder (CLIP and T5 folders built here, random weights), the text-conditioned DiT, and
classifier-free guidance on text and on context frames."""

import json

import pytest
import torch

from vdp_ray.diffusion import Condition, ConditionedDenoiser, GaussianDiffusion
from vdp_ray.models.dit import DiT
from vdp_ray.text import TextEncoder, TextError, drop_text, encoder_kind, make_word_encoder

CAPTIONS = ["a 3 moving left and a 7 moving down", "the digits 3 and 7", "a 1 moving up"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_word_encoder(tmp_path_factory.mktemp("clip"), CAPTIONS, dim=32)


def test_a_local_clip_text_model_encodes_captions_with_a_mask_and_the_eos_state_as_pooled(clip_dir):
    enc = TextEncoder(clip_dir, max_tokens=12)
    out = enc.encode(["a 3 moving left", "", "the digits 3 and 7"])
    assert out["tokens"].shape == (3, 12, 32) and out["pooled"].shape == (3, 32) and enc.dim == 32
    assert out["mask"].sum(1).tolist() == [6, 2, 7]  # <bos> words <eos>; the null text is <bos> <eos>
    last = out["mask"].sum(1) - 1  # CLIP pools the state at the end-of-text token
    assert torch.allclose(out["pooled"], out["tokens"][torch.arange(3), last], atol=1e-5)
    assert not torch.allclose(out["pooled"][0], out["pooled"][2])  # captions are told apart
    again = TextEncoder(clip_dir, max_tokens=12).encode(["a 3 moving left"])  # loads the same weights
    assert torch.equal(again["tokens"][0], out["tokens"][0])


def test_a_local_t5_encoder_pools_by_the_mean_of_its_real_tokens(clip_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    PreTrainedTokenizerFast.from_pretrained(clip_dir).save_pretrained(tmp_path)
    T5EncoderModel(T5Config(vocab_size=64, d_model=24, d_kv=8, d_ff=48, num_layers=1, num_heads=3)).save_pretrained(
        tmp_path
    )
    enc = TextEncoder(tmp_path, max_tokens=10)
    assert enc.kind == "t5" and enc.dim == 24
    out = enc.encode(["a 1 moving up"])
    n = int(out["mask"].sum())
    assert torch.allclose(out["pooled"][0], out["tokens"][0, :n].mean(0), atol=1e-5)


def test_an_unusable_encoder_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(TextError, match=r"no config.json.*nothing is downloaded"):
        encoder_kind(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TextError, match=r"model_type 'bert' is not supported"):
        encoder_kind(tmp_path)


def _text(n, length=6, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, :3] = True
    return {
        "text_tokens": torch.randn(n, length, dim, generator=g),
        "text_mask": mask,
        "text_pooled": torch.randn(n, dim, generator=g),
    }


def _randomise(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:  # the zero-initialised layers: give them something to say
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_a_text_dit_starts_at_zero_listens_to_the_caption_and_ignores_padding():
    model = DiT(in_channels=4, hidden=32, depth=2, heads=2, max_frames=8, max_size=(8, 8), text_dim=16).eval()
    x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([10, 500])
    text = _text(2)
    assert torch.count_nonzero(model(x, t, None, **text)) == 0  # AdaLN-Zero and the cross-attention output
    _randomise(model)
    out = model(x, t, None, **text)
    other = model(x, t, None, **_text(2, seed=5))
    assert not torch.allclose(out, other, atol=1e-4)
    padded = {**text, "text_tokens": text["text_tokens"].clone()}
    padded["text_tokens"][:, 3:] += 100.0  # padding positions are masked out of the attention
    assert torch.allclose(model(x, t, None, **padded), out, atol=1e-5)
    with pytest.raises(ValueError, match="text-conditioned: pass text_tokens"):
        model(x, t, None)
    plain = DiT(in_channels=4, hidden=32, depth=1, heads=2, max_frames=8, max_size=(8, 8))
    with pytest.raises(ValueError, match="trained without text"):
        plain(x, t, None, **text)


def test_text_dropout_swaps_in_the_null_text_per_clip():
    text, null = _text(64), _text(1, seed=9)
    out = drop_text(text, null, 0.5, torch.Generator().manual_seed(0))
    dropped = [torch.equal(out["text_pooled"][i], null["text_pooled"][0]) for i in range(64)]
    kept = [torch.equal(out["text_pooled"][i], text["text_pooled"][i]) for i in range(64)]
    assert all(d != k for d, k in zip(dropped, kept, strict=True)) and 16 < sum(dropped) < 48
    for i in range(64):  # the whole caption goes, tokens and mask with it
        source = null if dropped[i] else {k: v[i : i + 1] for k, v in text.items()}
        assert torch.equal(out["text_tokens"][i], source["text_tokens"][0])
        assert torch.equal(out["text_mask"][i], source["text_mask"][0])
    assert drop_text(text, null, 0.0) is text


class _Probe(torch.nn.Module):
    """Outputs a constant that encodes which branch it is in: 1 per given frame seen, +10 with real text."""

    def forward(self, x, t, mask, text_tokens, text_mask, text_pooled):
        ctx = (mask.float().sum(1) > 0).float() if mask is not None else torch.zeros(x.shape[0])
        txt = text_pooled[:, 0]  # 10 for the caption, 0 for the null text
        return (ctx + txt).view(-1, 1, 1, 1, 1).expand_as(x).clone()


@pytest.mark.parametrize(("g_ctx", "g_txt"), [(1.0, 1.0), (3.0, 1.0), (1.0, 4.0), (3.0, 4.0)])
def test_guidance_on_context_and_text_combines_the_branches_as_documented(g_ctx, g_txt):
    diffusion = GaussianDiffusion(num_timesteps=100, prediction_type="x0", anchor="none")
    n, frames = 2, 4
    x = torch.randn(n, 1, frames, 2, 2)
    mask = torch.zeros(n, frames, dtype=torch.bool)
    mask[:, 0] = True
    text = {
        "text_tokens": torch.zeros(n, 2, 1),
        "text_mask": torch.ones(n, 2, dtype=torch.bool),
        "text_pooled": torch.full((n, 1), 10.0),
    }
    null = {**text, "text_pooled": torch.zeros(n, 1)}
    den = ConditionedDenoiser(_Probe(), diffusion, Condition(x, mask, text, null), guidance=g_ctx, text_guidance=g_txt)
    x0, _ = den(torch.randn_like(x), 50)
    full, ctx_only, uncond = 11.0, 1.0, (0.0 if g_txt != 1.0 else 10.0)
    if g_txt != 1.0 and g_ctx != 1.0:
        expected = uncond + g_ctx * (ctx_only - uncond) + g_txt * (full - ctx_only)
    elif g_txt != 1.0:
        expected = ctx_only + g_txt * (full - ctx_only)
    else:
        expected = uncond + g_ctx * (full - uncond)
    assert torch.allclose(x0[:, :, 1:], torch.full_like(x0[:, :, 1:], expected))
    assert torch.equal(x0[:, :, :1], x[:, :, :1])  # given frames come back as they were
    # without context frames, only text guidance applies: null + g (caption - null)
    den = ConditionedDenoiser(
        _Probe(), diffusion, Condition(model_kwargs=text, null_kwargs=null), guidance=g_ctx, text_guidance=g_txt
    )
    x0, _ = den(torch.randn_like(x), 50)
    assert torch.allclose(x0, torch.full_like(x0, 0.0 + g_txt * 10.0))
