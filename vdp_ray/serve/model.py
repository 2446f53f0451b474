"""The model deployment: one Predictor per replica (a GPU each when asked), imported unchanged; compatible requests
share one batched sampling call (``@serve.batch``), and ``check_health`` runs a real one-step sample."""

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from .api import ApiError, Params


@dataclass
class Job:
    params: Params
    frames: np.ndarray | None  # the clip the task works on (predict: the context; interpolate: first+last)
    enqueued: float = 0.0


@serve.deployment(name="Model", health_check_period_s=10, health_check_timeout_s=60, max_ongoing_requests=64)
class Model:
    """One Predictor per replica (a GPU each when asked); compatible requests share a batched call."""

    def __init__(self, export: str, device: str = "cpu", max_batch_size: int = 8, batch_wait_s: float = 0.05,
                 precision: str = "auto"):  # fmt: skip
        from ..predict import Predictor

        self.predictor = Predictor.from_export(export, device=device, precision=precision)
        self.meta = dict(self.predictor.export.meta)
        self.run.set_max_batch_size(max_batch_size)
        self.run.set_batch_wait_timeout_s(batch_wait_s)

    def info(self) -> dict:
        return {**self.predictor.info(), "export": {k: v for k, v in self.meta.items() if k != "vae_export"}}

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s: a one-step sample must still run."""
        p = self.predictor
        p.generate(p.tc, steps=1, seed=0)

    async def __call__(self, job: Job):
        job.enqueued = time.perf_counter()
        return await self.run(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(self, jobs: list[Job]) -> list:
        # sampling in a thread: the replica keeps queueing requests (the next batch) meanwhile
        return await asyncio.to_thread(self._run_all, jobs)

    def _run_all(self, jobs: list[Job]) -> list:
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            key = job.params.batch_key()
            if job.params.seed is not None:
                key = (*key, i)  # a seeded request runs alone: its seed alone decides its output
            shape = None if job.frames is None else job.frames.shape
            groups.setdefault((key, shape), []).append(i)
        results: list = [None] * len(jobs)
        for indices in groups.values():
            group = [jobs[i] for i in indices]
            start = time.perf_counter()
            try:
                outputs = self._run_group(group)
            except ApiError as exc:
                outputs = [exc] * len(group)
            except ValueError as exc:  # PredictError and the samplers' checks: the request asked for it
                outputs = [ApiError(422, "parameters", str(exc))] * len(group)
            seconds = time.perf_counter() - start
            for i, out in zip(indices, outputs, strict=True):
                if not isinstance(out, Exception):
                    out = {"frames": out, "compute_s": seconds, "queue_s": start - jobs[i].enqueued,
                           "batch": len(group)}  # fmt: skip
                results[i] = out
        return results

    def _run_group(self, group: list[Job]) -> list[np.ndarray]:
        p, first = self.predictor, group[0].params
        kw = first.sampling()
        if p.text is not None:  # each clip its own prompt ("" = the null text)
            per_clip = [job.params.batch if first.task == "generate" else 1 for job in group]
            kw["prompt"] = [job.params.prompt or "" for job, k in zip(group, per_clip, strict=True) for _ in range(k)]
        if first.task == "generate":
            sizes = [job.params.batch for job in group]
            out = p.generate(first.frames, batch=sum(sizes), **kw)
            out = out if out.ndim == 5 else out[None]
            splits = np.cumsum(sizes)[:-1]
            return [clips if len(clips) > 1 else clips[0] for clips in np.split(out, splits)]
        stack = np.stack([job.frames for job in group])
        if first.task == "predict":
            out = p.predict(stack, first.future, context=stack.shape[1], **kw)
        elif first.task == "interpolate":
            tc = p.tc
            out = p.interpolate(stack[:, :tc], stack[:, -tc:], first.between, **kw)
        else:
            out = p.refine(stack, first.strength, **kw)
        return list(out)
