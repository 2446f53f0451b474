"""What a sample is conditioned on, and a network turned into (x0, eps) estimates under that condition.

A ``Condition`` bundles everything one batch is conditioned on: the given frames and their frame mask (the
task: prediction, interpolation, nothing for generation), the extra inputs the network takes (text) and their
null values (for guidance on them). Training previews and the Predictor build one the same way and hand it to
``sample``; guidance is applied by ``ConditionedDenoiser``, never inside a sampler (DiT's ``forward_with_cfg``
keeps it model-side the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .process import DiffusionProcess, expand_to


@dataclass
class Condition:
    """given: (N, C, T, ...) clean frames (only the positions ``mask`` marks are read) or None; mask: (N, T) bool,
    True = given, or None = nothing given; model_kwargs: the network's other inputs (e.g. text tokens);
    null_kwargs: their null value (the empty caption) for guidance on them, or None for no such guidance."""

    given: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    model_kwargs: dict = field(default_factory=dict)
    null_kwargs: dict | None = None
    any_given: bool | None = None  # whether the mask marks any frame (None: read from the mask once, on the host)

    def __post_init__(self):
        if self.mask is not None and self.given is None:
            raise ValueError("a frame mask needs the context frames it marks as given")

    @classmethod
    def first_frames(cls, given: torch.Tensor, num_frames: int, **kwargs) -> Condition:
        """The prediction task: ``given`` (N, C, k, ...) are the first k of ``num_frames`` frames."""
        n, k = given.shape[0], given.shape[2]
        if not 0 < k < num_frames:
            raise ValueError(f"given frames must be in [1, {num_frames - 1}] for a {num_frames}-frame clip, got {k}")
        frames = given.new_zeros(n, given.shape[1], num_frames, *given.shape[3:])
        frames[:, :, :k] = given
        mask = torch.zeros(n, num_frames, dtype=torch.bool, device=given.device)
        mask[:, :k] = True
        return cls(frames, mask, any_given=True, **kwargs)

    @property
    def has_frames(self) -> bool:
        if self.any_given is None:  # one device sync, then known
            self.any_given = self.mask is not None and bool(self.mask.any())
        return self.mask is not None and self.any_given

    def keep_given(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the given frames put back exactly as given."""
        if self.mask is None:
            return x
        return torch.where(expand_to(self.mask, x), self.given.to(x.dtype), x)


class ConditionedDenoiser:
    """Turns a network into (x0, eps) estimates under a ``Condition``, with classifier-free guidance.

    Given frames enter the conditional pass clean with timestep 0 (as in training); the unconditional
    pass sees the plain noisy state with the null mask. Guidance combines the two outputs in the
    network's own prediction space: out = uncond + g (cond - uncond) (Ho & Salimans 2022, eq. 6).
    """

    def __init__(
        self,
        model,
        diffusion: DiffusionProcess,
        condition: Condition | None = None,
        guidance: float = 1.0,
        text_guidance: float = 1.0,
        clip_x0: float | None = None,
    ):
        self.model = model
        self.diffusion = diffusion
        self.cond = condition or Condition()
        self.guidance = guidance
        self.text_guidance = text_guidance if self.cond.null_kwargs else 1.0
        self.clip_x0 = clip_x0
        # the anchor of the given frames (and their motion estimate), prepared once for the whole sampling run
        given = self.cond.has_frames
        self.anchor = diffusion.anchor.prepare(self.cond.given if given else None, self.cond.mask if given else None)
        self.null_anchor = self.anchor.without_frames()  # the unconditional branch's: no frames, no estimate

    def __call__(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at the process's native time t (a DDPM step, or a flow time in [0, 1])."""
        n, num_frames = x_t.shape[0], x_t.shape[2]
        a, s, model_t = self.diffusion.point(t)
        t_full = torch.full((n, num_frames), model_t, device=x_t.device)  # fp32: bf16 cannot tell 999 from 1000
        cond = self.cond
        # the conditional input as in training: given frames clean, at time 0, marked by the mask
        if cond.has_frames:
            given = expand_to(cond.mask, x_t)
            x_in = torch.where(given, cond.given, x_t)
            t_cond = torch.where(cond.mask, torch.zeros_like(t_full), t_full)
            mask = cond.mask
        else:
            x_in, t_cond, mask = x_t, t_full, None
        g_ctx = self.guidance if cond.has_frames else 1.0  # no frames: nothing to guide towards
        g_txt = self.text_guidance
        # Branches (Brooks et al. 2023, eq. 3 for two conditions): full = context + text; ctx = context +
        # null text; uncond = no context (+ the text when text guidance is off, else the null text).
        seen = self.anchor.inputs(x_t.dtype)  # the reference clip the network corrects, if it takes one
        branches = {"full": (x_in, t_cond, mask, {**cond.model_kwargs, **seen})}
        if g_txt != 1.0:
            branches["ctx"] = (x_in, t_cond, mask, {**cond.null_kwargs, **seen})
        if g_ctx != 1.0:
            text = cond.null_kwargs if g_txt != 1.0 else cond.model_kwargs
            branches["uncond"] = (x_t, t_full, None, {**text, **self.null_anchor.inputs(x_t.dtype)})
        outs = self._run(branches)
        # each branch's output read through its anchor: the clean clip (or the objective's space, without one)
        outs = {k: (self.null_anchor if k == "uncond" else self.anchor).apply(v) for k, v in outs.items()}
        full = outs["full"]
        if g_txt != 1.0 and g_ctx != 1.0:
            ctx = outs["ctx"]
            out = outs["uncond"] + g_ctx * (ctx - outs["uncond"]) + g_txt * (full - ctx)
        elif g_txt != 1.0:
            ctx = outs["ctx"]
            out = ctx + g_txt * (full - ctx)
        elif g_ctx != 1.0:
            out = outs["uncond"] + g_ctx * (full - outs["uncond"])
        else:
            out = full
        # Guidance combined the predictions before the split: the split is affine in the prediction for a fixed
        # x_t, so combining x0s or eps's gives the same point, and one split costs less than three.
        x0, eps = self.diffusion.split(out, x_t, a, s)
        if self.clip_x0 is not None:  # keep x0 in the data's range; eps follows so the pair stays consistent
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = (x_t - a * x0) / max(s, 1e-12)
        if mask is not None:
            # Given frames: the clean context, with the noise that the state already carries for them.
            given = expand_to(mask, x_t)
            x0 = torch.where(given, cond.given, x0)
            eps = torch.where(given, (x_t - a * cond.given) / max(s, 1e-12), eps)
        return x0, eps

    def _run(self, branches: dict) -> dict:
        """All branches in one batched network call (a null mask is all False)."""
        names = list(branches)
        if len(names) == 1:
            x, t, m, kw = branches[names[0]]
            return {names[0]: self.model(x, t, m, **kw).to(x.dtype)}  # an autocast network answers in half
        n, frames = next(iter(branches.values()))[0].shape[:3:2]
        xs, ts, ms, kws = zip(*branches.values(), strict=True)
        none = torch.zeros(n, frames, dtype=torch.bool, device=xs[0].device)
        masks = [none if m is None else m for m in ms]
        kwargs = {k: torch.cat([kw[k] for kw in kws]) if torch.is_tensor(kws[0][k]) else kws[0][k] for k in kws[0]}
        out = self.model(torch.cat(xs), torch.cat(ts), torch.cat(masks), **kwargs)
        return dict(zip(names, out.to(xs[0].dtype).chunk(len(names)), strict=True))
