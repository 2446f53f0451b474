"""The model deployment: one Predictor per replica (a GPU each when asked), imported unchanged; compatible requests
share one batched sampling call (``@serve.batch``), and ``check_health`` runs a real one-step sample."""

import asyncio
import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from .api import ApiError, Params, check_work


@dataclass
class Job:
    params: Params
    frames: np.ndarray | None  # the clip the task works on (predict: the context; interpolate: first+last)
    timeout_s: float | None = None  # how long its client waits: past it, sampling stops between steps
    work_s: float = math.inf  # the estimated sampling seconds it may ask for
    enqueued: float = 0.0
    deadline: float = math.inf


class Deadline(Exception):
    """Every client of a group has stopped waiting: its sampling stops at the next step."""


def _stop_after(deadline: float):
    """A sampler progress callback that raises Deadline once ``deadline`` (time.monotonic) has passed."""

    def check(_step: int, _steps: int) -> None:
        if time.monotonic() > deadline:
            raise Deadline()

    return check


@serve.deployment(name="Model", health_check_period_s=10, health_check_timeout_s=60, max_ongoing_requests=64)
class Model:
    """One Predictor per replica (a GPU each when asked); compatible requests share a batched call."""

    def __init__(
        self,
        export: str,
        device: str = "cpu",
        max_batch_size: int = 8,
        batch_wait_s: float = 0.05,
        precision: str = "auto",
    ):
        from ..predict import Predictor

        self.predictor = Predictor.from_export(export, device=device, precision=precision)
        self.meta = dict(self.predictor.export.meta)
        self.run.set_max_batch_size(max_batch_size)
        self.run.set_batch_wait_timeout_s(batch_wait_s)
        self.busy = threading.Lock()  # the Predictor runs one call at a time (batches, health checks)
        self.eval_s = self._time_one_evaluation()

    def _time_one_evaluation(self) -> float:
        """Seconds of one network evaluation of one clip-window here (a one-step generate, after a warm-up): what
        the ingress estimates each request's compute with."""
        p = self.predictor
        p.generate(steps=1, seed=0)
        start = time.perf_counter()
        p.generate(steps=1, seed=0)
        return time.perf_counter() - start

    def info(self) -> dict:
        return {
            **self.predictor.info(),
            "export": {k: v for k, v in self.meta.items() if k != "vae_export"},
            "eval_s": self.eval_s,
        }

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s: a one-step sample must still run. While a batch runs
        the replica is evidently working, and the check does not race it on the Predictor."""
        if not self.busy.acquire(blocking=False):
            return
        try:
            p = self.predictor
            p.generate(p.temporal_compression, steps=1, seed=0)
        finally:
            self.busy.release()

    async def __call__(self, job: Job):
        job.enqueued = time.perf_counter()
        try:  # priced before it queues: the Predictor counts its network evaluations, this replica timed one
            check_work(job.params, self.predictor.evaluations(job.params), self.eval_s, job.work_s)
        except ApiError as exc:
            return exc
        except ValueError as exc:  # PredictError: a request this model cannot take
            return ApiError(422, "parameters", str(exc))
        if job.timeout_s is not None:
            job.deadline = time.monotonic() + job.timeout_s
        return await self.run(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(self, jobs: list[Job]) -> list:
        # sampling in a thread: the replica keeps queueing requests (the next batch) meanwhile
        return await asyncio.to_thread(self._run_all, jobs)

    def _run_all(self, jobs: list[Job]) -> list:
        with self.busy:
            return self._run_groups(jobs)

    def _run_groups(self, jobs: list[Job]) -> list:
        """Each group of compatible requests in one sampling call; a group that fails fails only its own
        requests (a 504 once all its clients stopped waiting, a 503 out of memory, a 500 for a bug)."""
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
            except Deadline:
                outputs = [ApiError(504, "timeout", "stopped: the client stopped waiting")] * len(group)
            except MemoryError:
                outputs = [ApiError(503, "memory", "the server ran out of memory: retry, or ask for less")] * len(group)
            except Exception as exc:  # a CUDA OOM (a RuntimeError subclass) or a bug: this group's requests only
                if "out of memory" in str(exc).lower():
                    oom = ApiError(503, "memory", "the GPU ran out of memory: retry, or ask for less")
                    outputs = [oom] * len(group)
                else:
                    logging.getLogger("ray.serve").exception("sampling failed for %d request(s)", len(group))
                    outputs = [
                        ApiError(500, "server", f"sampling failed ({type(exc).__name__}); see the server's log")
                    ] * len(group)
            seconds = time.perf_counter() - start
            for i, out in zip(indices, outputs, strict=True):
                if not isinstance(out, Exception):
                    out = {
                        "frames": out,
                        "compute_s": seconds,
                        "queue_s": start - jobs[i].enqueued,
                        "batch": len(group),
                    }
                results[i] = out
        return results

    def _run_group(self, group: list[Job]) -> list[np.ndarray]:
        p, first = self.predictor, group[0].params
        kw = {**first.sampling(), "seed": first.seed}
        kw["progress"] = _stop_after(max(job.deadline for job in group))  # checked between sampling steps
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
            end = p.temporal_compression  # first and last are one latent frame each
            out = p.interpolate(stack[:, :end], stack[:, -end:], first.between, **kw)
        else:
            out = p.refine(stack, first.strength, **kw)
        return list(out)
