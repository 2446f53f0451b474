"""Photo pans: real photographs that ship inside declared packages (scikit-learn's sample images, scikit-image's
bundled ones), filmed by a virtual camera that pans and zooms across them at random speeds, with optional moving
sprites. Clips have real texture, real edges and known motion, and no download is needed: a realistic data set to
tune on, split by photo (never by clip) so validation shows photos training never saw. Clip i is a function of
(seed, i, photo) alone.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# (name, package): colour photos first, then grayscale ones (filmed as grey in RGB clips)
PHOTOS = (
    ("china", "sklearn"),
    ("flower", "sklearn"),
    ("astronaut", "skimage"),
    ("chelsea", "skimage"),
    ("coffee", "skimage"),
    ("rocket", "skimage"),
    ("hubble_deep_field", "skimage"),
    ("immunohistochemistry", "skimage"),
    ("camera", "skimage"),
    ("coins", "skimage"),
    ("moon", "skimage"),
    ("grass", "skimage"),
    ("gravel", "skimage"),
    ("brick", "skimage"),
    ("clock", "skimage"),
    ("cell", "skimage"),
)
STILL_FRACTION = 0.1  # clips of a still camera among the pans (static footage exists)
ZOOM_FRACTION = 0.3  # clips that zoom while they pan
SPEED_RANGE = (0.25, 2.5)  # camera speed in output pixels per frame
ZOOM_RATE = 0.03  # largest zoom per frame (log scale)
SENSOR_NOISE = 1.0  # grey levels


class PhotoError(RuntimeError):
    pass


@lru_cache(maxsize=len(PHOTOS))
def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as float32 (H, W, 3) in [0, 1]."""
    package = dict(PHOTOS).get(name)
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    elif package == "skimage":
        try:
            import skimage.data
        except ImportError as exc:  # a declared dependency; a broken install says so
            raise PhotoError(f"photo-pans needs scikit-image for the photo {name!r}: {exc}") from None
        img = getattr(skimage.data, name)()
    else:
        raise PhotoError(f"unknown photo {name!r}; expected one of {[p for p, _ in PHOTOS]}")
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img[..., :3].astype(np.float32) / 255.0


def photo_pan_clip(
    index: int,
    seed: int,
    photo: str,
    frames: int,
    size: tuple[int, int],
    *,
    still: bool = False,
    sprites: tuple[int, int] = (0, 0),
    channels: int = 3,
    noise: float = SENSOR_NOISE,
) -> tuple[np.ndarray, dict]:
    """One clip (T, H, W, channels) uint8 of ``photo`` and what moves in it (camera velocity in output pixels per
    frame, zoom per frame, sprites). ``still``: the camera stands still (sprites may still move). ``noise``: sensor
    noise, the std in grey levels of independent Gaussian noise per pixel and frame (as any camera has: a still
    camera's frames are never identical)."""
    import torch
    import torch.nn.functional as F

    h, w = size
    rng = np.random.default_rng([seed, index])
    img = load_photo(photo)
    ph, pw = img.shape[:2]
    aspect = w / h
    # crop height in photo pixels: log-uniform from 1.5x the output to 70% of what the photo allows
    top = 0.7 * min(ph, pw / aspect)
    crop_h = float(np.exp(rng.uniform(np.log(min(1.5 * h, top)), np.log(top))))
    still = still or rng.uniform() < STILL_FRACTION
    zoom = 0.0 if still or rng.uniform() >= ZOOM_FRACTION else float(rng.uniform(-ZOOM_RATE, ZOOM_RATE))
    speed = 0.0 if still else float(rng.uniform(*SPEED_RANGE))
    angle = rng.uniform(0, 2 * np.pi)
    velocity = np.array([np.sin(angle), np.cos(angle)]) * speed  # output px per frame
    t = np.arange(frames)
    heights = crop_h * np.exp(zoom * t)  # photo px per frame's crop
    # the camera's path in photo pixels (output px scaled by the crop), kept inside the photo: slowed if needed
    for _ in range(20):
        path = np.cumsum(np.concatenate([[0.0], np.ones(frames - 1)]))[:, None] * velocity * (crop_h / h)
        half = np.stack([heights / 2, heights * aspect / 2], axis=1)
        lo, hi = (half - path).max(0), (np.array([ph, pw]) - half - path).min(0)
        if (lo <= hi).all():
            break
        velocity *= 0.5
    else:  # only if the zoom alone outgrows the photo
        zoom, heights, path, lo, hi = 0.0, np.full(frames, crop_h), np.zeros((frames, 2)), None, None
        half = np.array([[crop_h / 2, crop_h * aspect / 2]] * frames)
        lo, hi = half[0], np.array([ph, pw]) - half[0]
    start = lo + rng.uniform(size=2) * (hi - lo)
    centres = start + path  # (T, 2) in photo px (y, x)
    # sample every frame with one bilinear grid_sample, after an antialiased shrink to ~2x the output resolution
    scale = min(1.0, 2.0 * h / crop_h)
    src = torch.from_numpy(img).permute(2, 0, 1)[None]
    if scale < 1:
        src = F.interpolate(src, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    sh, sw = src.shape[-2:]
    ys = (np.arange(h) + 0.5) / h - 0.5  # output pixel centres across a crop, in crop units
    xs = (np.arange(w) + 0.5) / w - 0.5
    gy = (centres[:, 0, None] + ys[None] * heights[:, None]) * (sh / ph)  # (T, h) in shrunk px
    gx = (centres[:, 1, None] + xs[None] * heights[:, None] * aspect) * (sw / pw)  # (T, w)
    grid = np.stack(np.broadcast_arrays(gx[:, None, :] / sw * 2 - 1, gy[:, :, None] / sh * 2 - 1), axis=-1)
    out = F.grid_sample(
        src.expand(frames, -1, -1, -1),
        torch.from_numpy(grid).float(),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    video = out.permute(0, 2, 3, 1).numpy()  # (T, h, w, 3)
    sprite_meta = _add_sprites(video, rng, int(rng.integers(sprites[0], sprites[1] + 1)))
    if channels == 1:
        video = video.mean(-1, keepdims=True)
    if noise > 0:
        video = video + rng.normal(0, noise / 255, video.shape).astype(np.float32)
    clip = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    meta = {
        "photo": photo,
        "camera_velocity_yx": np.round(velocity, 3).tolist(),
        "zoom_per_frame": round(zoom, 4),
        "still": bool(speed == 0.0 and zoom == 0.0),
        "sprites": sprite_meta,
        "noise": noise,
    }
    return clip, meta


def _add_sprites(video: np.ndarray, rng: np.random.Generator, count: int) -> list[dict]:
    """Opaque discs with antialiased edges moving in straight lines and bouncing off the frame's walls."""
    frames, h, w, _ = video.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    meta = []
    for _ in range(count):
        radius = float(rng.uniform(1.5, max(2.0, 0.12 * min(h, w))))
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        pos = rng.uniform([radius, radius], [h - radius, w - radius])
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 3.0) * min(h, w) / 32
        vel = np.array([np.sin(angle), np.cos(angle)]) * speed
        meta.append(
            {
                "radius": round(radius, 2),
                "start_yx": np.round(pos, 2).tolist(),
                "velocity_yx": np.round(vel, 3).tolist(),
            }
        )
        for f in range(frames):
            alpha = np.clip(radius + 0.5 - np.hypot(yy - pos[0], xx - pos[1]), 0, 1)[..., None]
            video[f] = video[f] * (1 - alpha) + colour * alpha
            pos = pos + vel
            for axis, limit in ((0, h), (1, w)):
                if not radius <= pos[axis] <= limit - radius:
                    vel[axis] = -vel[axis]
                    pos[axis] = np.clip(pos[axis], radius, limit - radius)
    return meta
