"""The HTTP API's parameters, without Ray or a web framework: the error every refusal is, the server's limits, and
the typed parameters of one request. Fields are type-checked here; their ranges are the library's own checks
(``config.check_sampling`` / ``check_prompts``, which the Predictor runs too), translated into a 422 naming the
field. Uploads are read in ``uploads.py``, responses written in ``responses.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import SettingError, check_prompts, check_sampling
from ..latent import latent_frames
from ..options import arg
from ..vocab import RESPONSE_FORMATS as FORMATS


class ApiError(Exception):
    """A request the API refuses: ``status`` (4xx), the ``field`` at fault and a message that says what was
    expected."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": self.message, "status": self.status}}


def _mb(text: str) -> int:
    return int(float(text) * 1024 * 1024)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the server's options set them."""

    max_upload_bytes: int = arg(32 * 1024 * 1024, "largest request body, in MB", flag="--max-upload-mb", parse=_mb,
                                show=lambda b: f"{b / 2**20:g} MB")  # fmt: skip
    max_frames: int = arg(256, "most frames in an upload, and frames asked for")
    max_pixels: int = 1024 * 1024  # per frame of an upload (decoded), before any resize
    max_decoded_bytes: int = arg(256 * 1024 * 1024, "most bytes one upload's frames may decode to (RGB), in MB",
                                 flag="--max-decoded-mb", parse=_mb, show=lambda b: f"{b / 2**20:g} MB")  # fmt: skip
    decode_timeout_s: float = 30.0  # wall clock for decoding one upload
    max_work_s: float | None = None  # estimated sampling seconds a request may ask for; None: the request timeout
    max_steps: int = 1000
    max_batch: int = 8  # clips one generate request may ask for


# ------------------------------------------------------------------------------------ parameters
@dataclass
class Params:
    task: str
    context: int | None = None
    future: int = 8
    frames: int | None = None  # generate: clip length
    batch: int = 1  # generate
    between: int | None = None  # interpolate
    strength: float = 0.5  # refine
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    format: str = "gif"
    resize: bool = False
    fps: float = 4.0
    prompt: str | None = None  # text-conditioned models
    text_guidance: float | None = None

    def sampling(self) -> dict:
        kw = {"sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "seed": self.seed}
        return {**kw, "text_guidance": self.text_guidance} if self.text_guidance is not None else kw

    def batch_key(self) -> tuple:
        """Requests with equal keys (and equal clip shapes) can share one batched sampling call; prompts may
        differ within a batch (each clip has its own)."""
        return (self.task, self.context, self.future, self.frames, self.between, self.strength, self.sampler,
                self.steps, self.guidance, self.seed, self.text_guidance)  # fmt: skip


FIELDS = {  # name: (type, tasks it applies to; None = all)
    "context": (int, ("predict",)),
    "future": (int, ("predict",)),
    "frames": (int, ("generate",)),
    "batch": (int, ("generate",)),
    "between": (int, ("interpolate",)),
    "strength": (float, ("refine",)),
    "sampler": (str, None),
    "steps": (int, None),
    "guidance": (float, None),
    "seed": (int, None),
    "format": (str, None),
    "resize": (bool, None),
    "fps": (float, None),
    "prompt": ("text", None),
    "text_guidance": (float, None),
}


def parse_params(task: str, raw: dict, limits: Limits, model: dict) -> Params:
    """Typed, range-checked parameters of one request (form fields, query parameters or JSON values, all
    accepted as strings too). ``model`` is ``Predictor.info()``."""
    unknown = sorted(k for k in raw if k not in FIELDS or (FIELDS[k][1] and task not in FIELDS[k][1]))
    if unknown:
        allowed = [k for k, (_, tasks) in FIELDS.items() if not tasks or task in tasks]
        raise ApiError(422, unknown[0], f"unknown parameter for /v1/{task}; expected some of {allowed}")
    p = Params(task=task)
    for name, value in raw.items():
        if value is None or value == "":
            continue
        setattr(p, name, _coerce(name, value, FIELDS[name][0]))

    if p.format not in FORMATS:
        raise ApiError(422, "format", f"expected one of {list(FORMATS)}, got {p.format!r}")
    _range(p.steps, "steps", 1, limits.max_steps)  # the server's own budget, within the model's timesteps
    _range(p.seed, "seed", 0, 2**63 - 1)
    _range(p.fps, "fps", 0.5, 60.0)
    try:
        check_sampling(model.get("num_timesteps", limits.max_steps), sampler=p.sampler, steps=p.steps,
                       guidance=p.guidance, text_guidance=p.text_guidance)  # fmt: skip
        check_prompts(bool(model.get("text")), p.prompt, p.text_guidance, 1)
    except SettingError as exc:
        raise ApiError(422, exc.field, exc.message) from None
    frames_per_latent = model.get("temporal_compression", 1)
    if task == "predict":
        _range(p.future, "future", 1, limits.max_frames)
        _range(p.context, "context", 1, model["max_context"])
    elif task == "generate":
        p.frames = model["frames"] if p.frames is None else p.frames
        _range(p.frames, "frames", 1, limits.max_frames)
        _range(p.batch, "batch", 1, limits.max_batch)
    elif task == "interpolate":
        if p.between is None:
            raise ApiError(422, "between", "missing: how many frames to make between the first and the last")
        _range(p.between, "between", 1, min(limits.max_frames, model["frames"] - 2 * frames_per_latent))
        try:
            latent_frames(p.between, frames_per_latent, "between")
        except SettingError as exc:
            raise ApiError(422, exc.field, exc.message) from None
    elif task == "refine" and not 0.0 < p.strength <= 1.0:
        raise ApiError(422, "strength", f"must be in (0, 1], got {p.strength}")
    return p


def work(p: Params, model: dict) -> tuple[int, list[str]]:
    """Network evaluations of one clip-window that request ``p`` asks for (windows x steps x evaluations per
    step x guidance branches x clips) and the fields that set it. ``model`` is the Model deployment's info."""
    d = model.get("defaults", {})
    frames, most = model["frames"], model["max_context"]
    steps = p.steps or d.get("steps") or 1
    fields = ["steps"]
    windows, clips = 1, 1
    if p.task == "predict":
        context = min(p.context or most, most)
        windows = math.ceil(p.future / max(1, frames - context))
        fields.append("future")
    elif p.task == "generate":
        windows = 1 + math.ceil(max(0, (p.frames or frames) - frames) / max(1, frames - most))
        clips = p.batch
        fields += ["frames", "batch"]
    elif p.task == "refine":
        steps = max(1, math.ceil(steps * p.strength))
        fields.append("strength")
    per_step = 2 if (p.sampler or d.get("sampler")) == "heun" else 1
    guidance = p.guidance if p.guidance is not None else d.get("guidance") or 1.0
    text_guidance = p.text_guidance if p.text_guidance is not None else d.get("text_guidance") or 1.0
    branches = 1 + (guidance != 1.0) + (text_guidance != 1.0)
    return windows * steps * per_step * branches * clips, fields


def check_work(p: Params, model: dict, timeout_s: float) -> None:
    """Refuse (422, naming the fields) a request whose estimated compute passes the request time limit, from
    the replica's measured seconds per evaluation (``model["eval_s"]``)."""
    seconds = model.get("eval_s")
    if not seconds:
        return
    evals, fields = work(p, model)
    if evals * seconds > timeout_s:
        raise ApiError(422, ",".join(fields), f"about {evals} network evaluations (~{evals * seconds:.0f} s here), "
                       f"past the server's {timeout_s:g} s of work per request: ask for fewer "
                       f"{', '.join(fields)}")  # fmt: skip


def _coerce(name: str, value, kind):
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ApiError(422, name, f"expected true or false, got {str(value)[:40]!r}")
    if kind in (str, "text"):
        if not isinstance(value, str):
            raise ApiError(422, name, f"expected a string, got {type(value).__name__}")
        return " ".join(value.split()) if kind == "text" else value.strip().lower()
    if isinstance(value, bool):
        raise ApiError(422, name, f"expected a number, got {value}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(422, name, f"expected a number, got {str(value)[:40]!r}") from None
    except OverflowError:  # an integer too long for a float (JSON allows 400 digits)
        raise ApiError(422, name, f"expected a number in range, got one of {len(str(value))} digits") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ApiError(422, name, f"expected a finite number, got {value}")
    if kind is int:
        if number != int(number):
            raise ApiError(422, name, f"expected an integer, got {value}")
        return int(number)
    return number


def _range(value, name: str, lo, hi) -> None:
    if value is not None and not lo <= value <= hi:
        raise ApiError(422, name, f"must be in [{lo}, {hi}], got {value}")
