"""How much digit identity the demo's task allows: the ceiling that any sharp prediction meets, from the data alone.

    python experiments/bench/identity_ceiling.py [--clips 600] [--samples 400000]

`make demo` predicts 4 frames of moving digits from 4 given ones (32x32), and `identity` reads each digit of the
last predicted frame where the digit truly is (``vdp_ray.evaluate.identity``). Three numbers bound it:

1. **The reader's tolerance**: identity of the true last frame moved by (dy, dx) pixels, as a prediction that is
   right but a little off would score (mean over the four diagonal signs).
2. **What four given frames say about the last position**: digits are drawn at whole-pixel positions (the
   rounded true position), so four given positions leave a range of speeds. For single digits that do not bounce
   within the 8 frames, under the data's own prior on speeds and directions (Monte Carlo: every (start, velocity)
   that rounds to the given positions), how often the best guess of the last position (3) is exact, within 1 px
   on both axes, and 2 px or more off. A sharp prediction has to put
   the digit somewhere; none can do better than this guess on average.
3. **The expected identity of the best guess** (the one with the highest expected read under (1) over every
   last position (2) allows): the ceiling for the easiest clips (one digit, no bounce, nothing in the way) of
   any sharp prediction; bounces and overlapping digits only lower it.

Also the motion estimate's identity (the untrained `diffusion.anchor: motion` model) per kind of clip.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_recipe import clips

from vdp_ray.anchor import estimate_motion
from vdp_ray.data.moving_digits import moving_digits_clip
from vdp_ray.evaluate import identity
from vdp_ray.pixels import clips_to_uint8

SIZE, FRAMES, GIVEN, SEED = (32, 32), 8, 4, 12345
SHIFTS = [(a, b) for b in range(5) for a in range(b + 1)]  # (smaller, larger) offsets, up to 4 px


def bounces(track: np.ndarray) -> bool:
    """A digit's steps change sign on some axis within the clip (track (T, D, 2) whole-pixel positions; a step of 0
    at the wall, as in 29, 30, 30, 29, does not hide the turn)."""
    steps = np.diff(track, axis=0).reshape(len(track) - 1, -1)
    for axis in steps.T:
        moving = np.sign(axis[axis != 0])
        if (moving[1:] != moving[:-1]).any():
            return True
    return False


def overlaps(track: np.ndarray, side: int) -> bool:
    return track.shape[1] > 1 and bool((np.abs(track[:, 0] - track[:, 1]) < side).all(-1).any())


def reader_tolerance(n: int) -> dict:
    metas: list = []
    u8 = clips_to_uint8(clips(n, SEED, FRAMES, SIZE, (1, 2), metas))
    last = FRAMES - 1
    out = {}
    for dy, dx in SHIFTS:
        reads = []
        for sy, sx in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            moved = np.roll(u8[:, last], (sy * dy, sx * dx), axis=(1, 2))
            reads.append(np.nanmean(identity(metas, u8[:, GIVEN - 1], moved, u8[:, last], last, SIZE)["identity"]))
        out[(dy, dx)] = float(np.mean(reads))
    return out


def read_at(off: np.ndarray, tolerance: dict) -> np.ndarray:
    """The reader's accuracy for digits off by ``off`` (M, 2) whole pixels (0 beyond 4 px: it reads ~0.1 at 4)."""
    return np.array([tolerance.get(tuple(sorted(o.tolist())), 0.0) for o in off.astype(int)])


def best_guess(n: int, samples: int, tolerance: dict) -> dict:
    """Single digits: the best guess of the last position from the four given ones, under the data's own physics
    (moving_digits: speeds, directions, reflection at the walls, positions drawn rounded), for every clip and for
    those without a bounce."""
    rng = np.random.default_rng(0)
    angle, speed = rng.uniform(0, 2 * np.pi, samples), rng.uniform(2.0, 4.0, samples) * min(SIZE) / 64
    vel0 = np.stack([np.sin(angle), np.cos(angle)], 1) * speed[:, None]  # moving_digits' prior
    phase = rng.uniform(-0.5, 0.5, (samples, 2))  # the true start about the drawn one
    rows = {"all": [], "no_bounce": []}
    skipped = 0
    for i in range(n):
        _, meta = moving_digits_clip(i, SEED, FRAMES, SIZE, (1, 1))
        track = np.array(meta["track_yx"])[:, 0]
        limit = np.array(SIZE, np.float64) - meta["side"]
        pos, vel = np.clip(track[0] + phase, 0, limit), vel0.copy()
        drawn = []
        for _ in range(FRAMES):  # moving_digits' own steps, for every sample at once
            drawn.append(np.round(pos))
            pos = pos + vel
            low, high = pos < 0, pos > limit
            pos = np.where(low, -pos, np.where(high, 2 * limit - pos, pos))
            vel = np.where(low | high, -vel, vel)
            pos = np.clip(pos, 0, limit)
        ok = np.all([(drawn[h] == track[h]).all(1) for h in range(GIVEN)], 0)
        if ok.sum() < 20:  # too few samples agree to judge
            skipped += 1
            continue
        finals, counts = np.unique(drawn[-1][ok], axis=0, return_counts=True)
        # the guess with the highest expected read over every last position the given frames allow
        scores = [(counts * read_at(np.abs(finals - f), tolerance)).sum() for f in finals]
        off = np.abs(finals[int(np.argmax(scores))] - track[-1]).astype(int)
        row = (off.max(), read_at(off[None], tolerance)[0])
        rows["all"].append(row)
        if not bounces(track[:, None]):
            rows["no_bounce"].append(row)
    out = {"skipped": skipped}
    for name, got in rows.items():
        offsets, read = np.array([r[0] for r in got]), np.array([r[1] for r in got])
        share = {"exact": offsets == 0, "within_1px": offsets <= 1, "off_2px_or_more": offsets >= 2}
        out[name] = {
            "digits": len(got),
            **{k: round(float(v.mean()), 3) for k, v in share.items()},
            "expected_identity": round(float(read.mean()), 3),
        }
    return out


def estimate_by_kind(n: int) -> dict:
    metas: list = []
    test = clips(n, SEED, FRAMES, SIZE, (1, 2), metas)
    mask = torch.zeros(n, FRAMES, dtype=torch.bool)
    mask[:, :GIVEN] = True
    built = torch.cat([estimate_motion(test[i : i + 32], mask[i : i + 32], 5).clip for i in range(0, n, 32)])
    u8, last = clips_to_uint8(test), FRAMES - 1
    read = identity(metas, u8[:, GIVEN - 1], clips_to_uint8(built.clamp(-1, 1))[:, last], u8[:, last], last, SIZE)
    kinds = []
    for raw in metas:
        meta = json.loads(raw)
        track = np.array(meta["track_yx"])
        kinds.append(("bounce" if bounces(track) else "") + ("+overlap" if overlaps(track, meta["side"]) else ""))
    kinds = np.array([k.strip("+") or "plain" for k in kinds])
    out = {"all": [n, round(float(np.nanmean(read["identity"])), 3)]}
    for kind in ("plain", "overlap", "bounce", "bounce+overlap"):
        sel = kinds == kind
        out[kind] = [int(sel.sum()), round(float(np.nanmean(read["identity"][sel])), 3) if sel.any() else None]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=600)
    ap.add_argument("--samples", type=int, default=400_000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tolerance = reader_tolerance(256)
    print(
        json.dumps({"reader_on_the_truth_moved_by": {f"{dy},{dx}": round(v, 3) for (dy, dx), v in tolerance.items()}})
    )
    print(json.dumps({"single_digits_best_guess": best_guess(args.clips, args.samples, tolerance)}))
    print(json.dumps({"estimate_identity_by_kind [clips, identity]": estimate_by_kind(128)}))


if __name__ == "__main__":
    main()
