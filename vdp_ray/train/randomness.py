"""Every random stream a rank draws from, seeded per rank and carried through checkpoints.

A rank draws masks on the CPU generator and timesteps and noise where its data is (the CUDA generator of its
device on a GPU); NumPy and Python's ``random`` are covered too, for what a stage or a library draws there. A
resumed rank continues each stream exactly where the checkpoint left it, so a run interrupted and resumed on
the same workers draws what it would have drawn uninterrupted. A rank the checkpoint has no state for (an
elastic run grown past the saved size) gets a stream of its own, never a copy of another rank's.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Distinct streams on every rank (and, for a rank joining at ``step``, distinct from its past)."""
    value = (seed * 7919 + rank + 104_729 * step) % 2**63
    torch.manual_seed(value)  # the CPU generator and every CUDA device's
    np.random.seed(value % 2**32)
    random.seed(value)


def rng_state(device: torch.device | None = None) -> dict:
    """This rank's generators, as tensors and plain values (loadable with ``torch.load(weights_only=True)``);
    on a CUDA ``device``, that device's generator (only it: asking every visible device would open a context
    on each of them)."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Continue the streams ``rng_state`` saved. A CPU rank's checkpoint resumed on a GPU keeps the CUDA
    generator as ``seed_rank`` left it."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _numpy_state() -> list:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]
