"""What a trained model is asked, declared once: the fields of `vdp predict`, `vdp evaluate` and the HTTP API.

Each field is an ``options.arg``, so one declaration gives the command line's flags (``options.add_arguments``),
the HTTP request's fields, how they are typed and which task takes them (``serve/api.py``) and its OpenAPI schema
(``serve/ingress.py``). Ranges are the library's checks (``config.check_sampling``, the Predictor's), which every
front end runs. Plain dataclasses: importing this costs neither torch nor Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import arg
from .vocab import SAMPLERS, TASKS

SAMPLING = "sampling (defaults: the export's sampling.* settings)"


@dataclass
class Sampling:
    """How to sample: each None is the export's own sampling.* setting."""

    sampler: str | None = arg(
        None,
        "ddpm, ddim, dpm++ (the fast solver), euler (= ddim), or heun (2nd order, two calls a step)",
        choices=SAMPLERS,
        group=SAMPLING,
    )
    steps: int | None = arg(None, "sampling steps (e.g. 1000 for ddpm, 50 ddim, 20 dpm++)", group=SAMPLING)
    guidance: float | None = arg(None, "classifier-free guidance on the context (1 = off)", group=SAMPLING)
    text_guidance: float | None = arg(None, "text models: guidance scale on the prompt (1 = off)", group=SAMPLING)
    # the command line is reproducible by default; a server's unseeded requests draw fresh noise (and may share
    # a batched sampling call, which a seeded one may not)
    seed: int | None = arg(None, "noise seed (same seed, same frames)", group=SAMPLING, cli_default=0)

    def sampling(self) -> dict:
        """The changes to the export's sampling settings (``Predictor.settings``; None keeps the export's)."""
        return {name: getattr(self, name) for name in ("sampler", "steps", "guidance", "text_guidance")}


# ------------------------------------------------------------------------- the fields of one task each
@dataclass
class PredictFields:
    context: int | None = arg(None, "given frames (default: the export's data.context_frames)")
    future: int | None = arg(None, "frames to predict (default: the rest of the model's window)")


@dataclass
class GenerateFields:
    frames: int | None = arg(None, "generate / refine: clip length (default: the model's window)")
    batch: int = arg(1, "generate: clips to make")


@dataclass
class InterpolateFields:
    between: int | None = arg(None, "interpolate: frames to make between two input frames")


@dataclass
class RefineFields:
    strength: float = arg(0.5, "refine: noise level in (0, 1]")


TASK_FIELDS = dict(zip(TASKS, (PredictFields, GenerateFields, InterpolateFields, RefineFields), strict=True))


@dataclass
class Request(Sampling, RefineFields, InterpolateFields, GenerateFields, PredictFields):
    """One task asked of a Predictor: its own fields (``TASK_FIELDS``), the sampling and those below."""

    task: str = arg("predict", "what to make", choices=TASKS)
    prompt: str | None = arg(None, "text-conditioned models: what the clip shows (e.g. 'a 3 moving left')")
    resize: bool = arg(False, "centre-crop and resize input to the model's frame size")
    fps: float | None = arg(None, "output frame rate (default: the input's, else 4)")
