"""How a trained model is sampled: the ``sampling`` config section (an export's defaults) and the one check of
what a single request may change (the Predictor, `vdp predict`, `vdp evaluate` and the HTTP API all call it).

"What was trained" (``diffusion``) and "how to sample it" (``sampling``) are separate sections, so two configs
that differ only in sampling describe the same trained model.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

from ..vocab import GUIDANCE_MAX, PROMPT_MAX_CHARS, SAMPLERS, SPACINGS
from .fields import opt


@dataclass(frozen=True)
class SamplingConfig:
    sampler: str = opt("ddim", "Default sampler.", choices=SAMPLERS)
    steps: int = opt(50, "Default sampling steps (network calls per window).", ge=1)
    eta: float = opt(0.0, "DDIM eta (0 = deterministic, 1 = DDPM-like).", ge=0.0, le=1.0)
    spacing: str = opt("trailing", "Sampling timestep spacing.", choices=SPACINGS)
    guidance: float = opt(
        1.0, "Classifier-free guidance scale on the context frames (1 = off).", ge=0.0, le=GUIDANCE_MAX
    )
    text_guidance: float = opt(
        1.0, "Guidance scale on the text (1 = off); text-conditioned models only.", ge=0.0, le=GUIDANCE_MAX
    )
    clip_x0: float | None = opt(
        1.0, "Clamp predicted x0 to [-v, v] while sampling pixels (latent models never clamp); unset = off.", gt=0.0
    )


# Names a request uses for the settings it may change; the CLI flags and HTTP fields are the same words.
REQUEST_KEYS = ("sampler", "steps", "guidance", "eta", "text_guidance")


class SettingError(ValueError):
    """A sampling setting or prompt a request may not have; ``field`` names it (as the request spelled it)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_sampling(max_steps: int, *, sampler=None, steps=None, guidance=None, eta=None, text_guidance=None) -> None:
    """Refuse a setting out of its range, naming it; None means "the model's default" and is always fine.
    ``max_steps``: the model's training timesteps (or a server's lower limit)."""
    if sampler is not None and sampler not in SAMPLERS:
        raise SettingError("sampler", f"unknown {sampler!r}; expected one of {list(SAMPLERS)}")
    if steps is not None and not (isinstance(steps, numbers.Integral) and 1 <= steps <= max_steps):
        raise SettingError("steps", f"must be in [1, {max_steps}], got {steps}")
    for name, value in (("guidance", guidance), ("text_guidance", text_guidance)):
        if value is not None and not 0.0 <= float(value) <= GUIDANCE_MAX:
            raise SettingError(name, f"must be in [0, {GUIDANCE_MAX:g}], got {value}")
    if eta is not None and not 0.0 <= float(eta) <= 1.0:
        raise SettingError("eta", f"must be in [0, 1], got {eta}")


def resolve_sampling(defaults: SamplingConfig, num_timesteps: int, **changes) -> SamplingConfig:
    """The export's sampling defaults with a request's changes (None = keep), each checked first."""
    unknown = sorted(set(changes) - set(REQUEST_KEYS))
    if unknown:
        raise SettingError(unknown[0], f"not a sampling setting; expected one of {list(REQUEST_KEYS)}")
    check_sampling(num_timesteps, **changes)
    given = {
        k: (int(v) if k == "steps" else v if k == "sampler" else float(v)) for k, v in changes.items() if v is not None
    }
    return replace(defaults, **given)


def check_prompts(has_text: bool, prompt, text_guidance, n: int) -> list[str] | None:
    """A request's prompt(s) for ``n`` clips: one string for all or one per clip. A model without text refuses
    both fields; returns the per-clip prompts ("" = the null text), or None for a model without text."""
    if not has_text:
        if prompt:
            raise SettingError("prompt", "this model was trained without text (no text.encoder); leave it out")
        if text_guidance not in (None, 1.0):
            raise SettingError("text_guidance", "this model was trained without text (no text.encoder)")
        return None
    prompts = [prompt or ""] * n if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
        raise SettingError("prompt", f"one string, or one per clip ({n}); got {prompt!r}")
    longest = max((len(p) for p in prompts), default=0)
    if longest > PROMPT_MAX_CHARS:
        raise SettingError("prompt", f"at most {PROMPT_MAX_CHARS} characters, got {longest}")
    return prompts
