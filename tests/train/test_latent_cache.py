"""The DiT stage's latent cache: each clip is encoded once, latents are still fresh samples of its posterior,
a changed clip (another crop or flip) is never served a stale posterior, and the memory cap holds."""

import torch

from vdp_ray.models import VAE3D
from vdp_ray.train.latent_cache import LatentCache

TINY_DIT = [
    "model.family=dit",
    "data.size=[16,16]",
    "data.frames=4",
    "data.channels=1",
    "data.context_frames=2",
    "vae.base_channels=8",
    "vae.channel_mults=[1,2,2]",
    "vae.spatial_compression=4",
    "vae.temporal_compression=2",
    "model.dit.hidden=32",
    "model.dit.depth=1",
    "model.dit.heads=2",
    "diffusion.masks.context_min=2",
    "diffusion.masks.context_max=2",
]


class CountingVAE:
    def __init__(self):
        torch.manual_seed(0)
        self.vae = VAE3D(
            in_channels=1,
            base_channels=8,
            channel_mults=(1, 2, 2),
            spatial_compression=4,
            temporal_compression=2,
            latent_channels=4,
        ).eval()
        self.encoded = 0

    def encode(self, x):
        self.encoded += x.shape[0]
        return self.vae.encode(x)


def clips(n, seed):
    return torch.rand(n, 1, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_each_clip_is_encoded_once_and_gets_its_own_posterior():
    vae, cache = CountingVAE(), LatentCache(max_mb=16)
    a, b = clips(3, 1), clips(2, 2)
    mean, std = cache.posterior(vae.encode, a)
    with torch.no_grad():
        direct = vae.vae.encode(a)
    torch.testing.assert_close(mean, direct.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, direct.std, atol=1e-5, rtol=1e-5)
    assert vae.encoded == 3 and cache.take_hit_rate() == 0.0

    mixed = torch.cat([b[:1], a[2:], a[:1], b[1:]])  # two new clips, two cached ones, in another order
    mean2, _ = cache.posterior(vae.encode, mixed)
    assert vae.encoded == 5  # only the two new ones went through the encoder
    assert cache.take_hit_rate() == 0.5 and cache.take_hit_rate() is None
    torch.testing.assert_close(mean2[1], mean[2])
    torch.testing.assert_close(mean2[2], mean[0])

    flipped = a[:1].flip(-1)  # an augmented clip is another clip
    mean3, _ = cache.posterior(vae.encode, flipped)
    assert vae.encoded == 6 and not torch.allclose(mean3[0], mean[0])


def test_the_latent_space_draws_fresh_latents_from_cached_posteriors():
    from vdp_ray.config import load_config
    from vdp_ray.latent import LatentSpace

    cfg = load_config(None, [*TINY_DIT, "vae.scale_factor=0.8"])
    vae = VAE3D(
        in_channels=1,
        base_channels=8,
        channel_mults=(1, 2, 2),
        spatial_compression=4,
        temporal_compression=2,
        latent_channels=cfg.vae.latent_channels,
    )
    space = LatentSpace.of_config(cfg, vae, LatentCache(16))
    x = clips(2, 3)
    z1, z2 = space.encode(x, sample=True), space.encode(x, sample=True)
    assert space.cache.take_hit_rate() == 0.5  # the second call was served from the cache
    assert not torch.allclose(z1, z2)  # ...but drew a new sample
    with torch.no_grad():
        q = vae.encode(x)
    assert space.scale == 0.8
    for z in (z1, z2):  # both are draws from q(z|x): standardised, they look like N(0, 1)
        r = (z / space.scale - q.mean) / q.std
        assert r.mean().abs() < 0.3 and 0.75 < r.std() < 1.25
    torch.testing.assert_close(space.encode(x), q.mode() * 0.8)  # not sampling: the posterior's mode, scaled


def test_the_dit_stage_caches_its_vae_posteriors_unless_told_not_to(tmp_path):
    from vdp_ray.config import load_config
    from vdp_ray.export import write_export
    from vdp_ray.models import build_vae
    from vdp_ray.train.stages import DiffusionStage

    cfg = load_config(None, TINY_DIT)
    vae = write_export(tmp_path / "vae", cfg, "vae", build_vae(cfg).state_dict(), {"steps": 1})
    cfg = cfg.updated({"vae.export": str(vae), "train.stages": ["dit"]})
    on = DiffusionStage(cfg, torch.device("cpu"))
    off = DiffusionStage(cfg.updated({"train.latent_cache_mb": 0}), torch.device("cpu"))
    assert on.latent.cache is not None and off.latent.cache is None
    x = clips(2, 3)
    for stage in (on, off):
        loss = stage.loss(stage.model, x, ["", ""], torch.float32)
        assert loss.ndim == 0 and torch.isfinite(loss)
    assert on.step_metrics() == {"latent_cache_hits": 0.0} and off.step_metrics() == {}
    on.loss(on.model, x, ["", ""], torch.float32)
    assert on.step_metrics() == {"latent_cache_hits": 1.0}


def test_a_full_cache_stops_adding_but_still_answers():
    vae = CountingVAE()
    one = 4 * 2 * 4 * 4 * 2 * 4  # latent elements (C, T, H, W) x (mean, std) x float32 bytes
    cache = LatentCache(max_mb=2.5 * one / 2**20)  # room for two clips
    a = clips(4, 5)
    mean, _ = cache.posterior(vae.encode, a)
    assert len(cache.entries) == 2 and cache.bytes == 2 * one <= cache.max_bytes
    mean2, _ = cache.posterior(vae.encode, a)
    assert vae.encoded == 6  # the two that did not fit are encoded again; the two held are not
    torch.testing.assert_close(mean, mean2)
