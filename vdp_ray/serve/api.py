"""The HTTP API's parameters, without Ray or a web framework: the error every refusal is, the server's limits, and
the typed parameters of one request. The fields are ``request.Request``'s (the command line's too) and the response's
``format``; each value is typed from its declaration. Their ranges are the library's own checks
(``config.check_sampling`` / ``check_prompts``, which the Predictor runs too), translated into a 422 naming the
field. Uploads are read in ``uploads.py``, responses written in ``responses.py``.
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, fields

from ..config import SettingError, check_prompts, check_sampling
from ..latent import latent_frames
from ..options import arg, field_types
from ..request import TASK_FIELDS, Request
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

    max_upload_bytes: int = arg(
        32 * 1024 * 1024,
        "largest request body, in MB",
        flag="--max-upload-mb",
        parse=_mb,
        show=lambda b: f"{b / 2**20:g} MB",
    )
    max_frames: int = arg(256, "most frames in an upload, and frames asked for")
    max_pixels: int = 1024 * 1024  # per frame of an upload (decoded), before any resize
    max_decoded_bytes: int = arg(
        256 * 1024 * 1024,
        "most bytes one upload's frames may decode to (RGB), in MB",
        flag="--max-decoded-mb",
        parse=_mb,
        show=lambda b: f"{b / 2**20:g} MB",
    )
    decode_timeout_s: float = 30.0  # wall clock for decoding one upload
    max_work_s: float | None = None  # estimated sampling seconds a request may ask for; None: the request timeout
    max_steps: int = 1000
    max_batch: int = 8  # clips one generate request may ask for


# ------------------------------------------------------------------------------------ parameters
@dataclass
class Params(Request):
    """One HTTP request: ``Request``'s fields (its task is the route's) and how the answer is written."""

    format: str = arg("gif", "the answer: a video, arrays (npz) or base64 PNGs (json)", choices=tuple(FORMATS))

    def batch_key(self) -> tuple:
        """Requests with equal keys (and equal clip shapes) can share one batched sampling call: every field but
        the prompt (each clip has its own), generate's clip count (a batch stacks them) and how the answer is
        written."""
        return tuple(v for k, v in asdict(self).items() if k not in ("prompt", "batch", "format", "resize", "fps"))


TYPES = field_types(Params)
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def fields_for(task: str) -> dict[str, Field]:
    """The fields a request for ``task`` takes: the shared ones and its task's own (the task is the route)."""
    others = {f.name for name, cls in TASK_FIELDS.items() if name != task for f in fields(cls)}
    return {f.name: f for f in fields(Params) if f.name not in others and f.name != "task"}


def schema(task: str) -> dict[str, dict]:
    """The JSON schema of each field a request for ``task`` takes (for the OpenAPI document)."""
    props = {}
    for name, f in fields_for(task).items():
        props[name] = {"type": JSON_TYPES[TYPES[name]]}
        if f.metadata["cli"]["choices"] is not None:
            props[name]["enum"] = list(f.metadata["cli"]["choices"])
    return props


def parse_params(task: str, raw: dict, limits: Limits, model: dict) -> Params:
    """Typed, range-checked parameters of one request (form fields, query parameters or JSON values, all
    accepted as strings too). ``model`` is ``Predictor.info()``."""
    known = fields_for(task)
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise ApiError(422, unknown[0], f"unknown parameter for /v1/{task}; expected some of {list(known)}")
    p = Params(task=task)
    for name, value in raw.items():
        if value is not None and value != "":
            setattr(p, name, _coerce(known[name], value))

    _range(p.steps, "steps", 1, limits.max_steps)  # the server's own budget, within the model's timesteps
    _range(p.seed, "seed", 0, 2**63 - 1)
    _range(p.fps, "fps", 0.5, 60.0)
    try:
        check_sampling(model.get("num_timesteps", limits.max_steps), **p.sampling())
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


# What to ask less of when a request is too much work: its steps and these, which multiply them.
COSTLY = {"predict": ["future"], "generate": ["frames", "batch"], "interpolate": [], "refine": ["strength"]}


def check_work(p: Params, evaluations: int, eval_s: float, budget_s: float) -> None:
    """Refuse (422, naming the fields) a request whose network ``evaluations`` (``Predictor.evaluations``), at
    ``eval_s`` seconds each (measured by the replica), pass ``budget_s``."""
    seconds = evaluations * eval_s
    if seconds > budget_s:
        fields = ["steps", *COSTLY[p.task]]
        raise ApiError(
            422,
            ",".join(fields),
            f"about {evaluations} network evaluations (~{seconds:.0f} s here), "
            f"past the server's {budget_s:g} s of work per request: ask for fewer "
            f"{', '.join(fields)}",
        )


def _coerce(f: Field, value):
    """``value`` as field ``f``'s type: a choice is a word in any case, free text keeps its case."""
    name, kind, choices = f.name, TYPES[f.name], f.metadata["cli"]["choices"]
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ApiError(422, name, f"expected true or false, got {str(value)[:40]!r}")
    if kind is str:
        if not isinstance(value, str):
            raise ApiError(422, name, f"expected a string, got {type(value).__name__}")
        if choices is None:
            return " ".join(value.split())
        word = value.strip().lower()
        if word not in choices:
            raise ApiError(422, name, f"expected one of {list(choices)}, got {value[:40]!r}")
        return word
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
