"""`vdp serve`: the Predictor behind an HTTP API on Ray Serve.

Two deployments: ``Api`` (the FastAPI ingress: reading uploads within a byte limit, checking every field,
encoding results, the browser page at ``/``) and ``Model`` (wraps ``Predictor``, imported unchanged;
requests that can share a sampling call are batched with ``@serve.batch``; ``check_health`` runs a real
forward pass). Clients get a 4xx naming the field for anything wrong with what they sent.

    from vdp_ray.serve import ServeOptions, build_app
    serve.run(build_app(ServeOptions(export="runs/demo/run/export")))
"""

import asyncio
import hmac
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from .api import FORMATS, TASKS, ApiError, Limits, Params, decode_clip, decode_json_frames, encode, fit_to_model
from .api import parse_params as _parse_params

STATIC = Path(__file__).parent / "static"


@dataclass
class ServeOptions:
    export: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    api_key_env: str | None = None  # the name of an environment variable holding the key
    device: str = "auto"
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch_size: int = 8  # 1 = no batching
    batch_wait_s: float = 0.1
    timeout_s: float = 120.0  # per request, from the ingress to the model and back
    limits: Limits = field(default_factory=Limits)

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"--api-key-env {self.api_key_env}: that environment variable is not set or empty")
        return key


# ------------------------------------------------------------------------------------------- model
@dataclass
class Job:
    params: Params
    frames: np.ndarray | None  # the clip the task works on (predict: the context; interpolate: first+last)
    enqueued: float = 0.0


@serve.deployment(name="Model", health_check_period_s=10, health_check_timeout_s=60, max_ongoing_requests=64)
class Model:
    """One Predictor per replica (a GPU each when asked); compatible requests share a batched call."""

    def __init__(self, export: str, device: str = "auto", max_batch_size: int = 8, batch_wait_s: float = 0.05):
        from ..predict import Predictor

        self.predictor = Predictor.from_export(export, device=device)
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
        if p.text_encoder is not None:  # each clip its own prompt ("" = the null text)
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


# ----------------------------------------------------------------------------------------- ingress
def _fastapi_app() -> FastAPI:
    return FastAPI(
        title="vdp_ray",
        version="1",
        description="Video diffusion: predict the future of a clip, generate, interpolate, refine. Upload a "
        "clip as multipart (field `file`: mp4, webm, gif, or a zip of PNG/JPEG frames) or send JSON "
        "(`frames`: base64 PNG/JPEG). Every error is JSON `{error: {field, message, status}}` with a 4xx.",
    )


fastapi_app = _fastapi_app()


@fastapi_app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status)


def _request_body_doc(task: str) -> dict:
    fields = {
        "predict": {"context": "integer", "future": "integer"},
        "generate": {"frames": "integer", "batch": "integer"},
        "interpolate": {"between": "integer"},
        "refine": {"strength": "number"},
    }[task]
    common = {"sampler": "string", "steps": "integer", "guidance": "number", "seed": "integer",
              "format": "string", "resize": "boolean", "fps": "number", "prompt": "string",
              "text_guidance": "number"}  # fmt: skip
    props = {k: {"type": v} for k, v in {**fields, **common}.items()}
    props["format"]["enum"] = list(FORMATS)
    props["sampler"] = {"type": "string", "enum": ["ddpm", "ddim", "dpm++"]}
    upload = {} if task == "generate" else {"file": {"type": "string", "format": "binary"}}
    frames = {} if task == "generate" else {"frames": {"type": "array", "items": {"type": "string"}}}
    return {
        "requestBody": {
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {**upload, **props}}},
                "application/json": {"schema": {"type": "object", "properties": {**frames, **props}}},
            }
        }
    }


async def _parse_form(request, body: bytes):
    """The multipart form of a body already read (within the limit): replayed to Starlette's parser."""
    from starlette.requests import Request

    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, receive).form(max_files=4, max_fields=64)
    except Exception as exc:  # a malformed multipart body, whatever the parser's complaint
        raise ApiError(400, "body", f"malformed multipart/form-data: {str(exc)[:200]}") from None


def _wants_clip(task: str, given, field: str, status: int, missing: str) -> bool:
    """Whether the task takes the clip that was (or was not) sent; refuses a clip generate cannot use and a
    missing one the other tasks need."""
    if task == "generate":
        if given is not None:
            raise ApiError(422, field, "generate takes no clip")
        return False
    if given is None:
        raise ApiError(status, field, missing)
    return True


# Everything the deployments use is defined above them: Serve serializes a deployment class when it is
# decorated.
@serve.deployment(name="Api", max_ongoing_requests=256)
@serve.ingress(fastapi_app)
class Api:
    def __init__(self, model, options: dict):
        self.model = model
        self.options = ServeOptions(**{**options, "limits": Limits(**options["limits"])})
        self.key = self.options.api_key()
        self.info: dict | None = None

    async def model_info(self) -> dict:
        if self.info is None:
            self.info = await self.model.info.remote()
        return self.info

    # -------------------------------------------------------------------------------------- routes
    @fastapi_app.get("/", include_in_schema=False)
    async def page(self):
        return HTMLResponse((STATIC / "index.html").read_text())

    @fastapi_app.get("/healthz", summary="Readiness: 200 once the model answers, 503 otherwise")
    async def healthz(self):
        try:
            info = await asyncio.wait_for(self.model_info(), timeout=10)
        except Exception as exc:  # not ready: the client should retry
            return JSONResponse({"status": "starting", "detail": type(exc).__name__}, status_code=503)
        return {"status": "ok", "model_id": info["model_id"]}

    @fastapi_app.get("/v1/model", summary="What the export is: family, frames, resolution, steps, defaults")
    async def model_meta(self, request: Request):
        self._authorize(request)
        return await self.model_info()

    @fastapi_app.post("/v1/predict", summary="The future of a clip", openapi_extra=_request_body_doc("predict"))
    async def predict(self, request: Request):
        return await self._handle("predict", request)

    @fastapi_app.post("/v1/generate", summary="New clips from nothing", openapi_extra=_request_body_doc("generate"))
    async def generate(self, request: Request):
        return await self._handle("generate", request)

    @fastapi_app.post("/v1/interpolate", summary="Frames between the first and the last of a clip",
                      openapi_extra=_request_body_doc("interpolate"))  # fmt: skip
    async def interpolate(self, request: Request):
        return await self._handle("interpolate", request)

    @fastapi_app.post("/v1/refine", summary="A noisy clip, refined (SDEdit)", openapi_extra=_request_body_doc("refine"))
    async def refine(self, request: Request):
        return await self._handle("refine", request)

    # ------------------------------------------------------------------------------------ handling
    def _authorize(self, request) -> None:
        if self.key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise ApiError(401, "api_key", "missing: send the key as 'Authorization: Bearer KEY' or 'X-API-Key'")
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            raise ApiError(401, "api_key", "wrong key")

    async def _handle(self, task: str, request: Request):
        try:
            self._authorize(request)
            info = await self.model_info()
            raw, clip = await self._read(request, task)
            params = _parse_params(task, raw, self.options.limits, info)
            frames, given, truth = self._frames_for(task, params, clip, info)
            start = time.perf_counter()
            try:
                out = await asyncio.wait_for(self.model.remote(Job(params, frames)), timeout=self.options.timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(504, "timeout", f"the model did not answer within {self.options.timeout_s:g} s; "
                               "ask for fewer steps or frames, or retry") from None  # fmt: skip
            if isinstance(out, Exception):
                raise out
            timing = {"total_s": round(time.perf_counter() - start, 4), "compute_s": round(out["compute_s"], 4),
                      "queue_s": round(out["queue_s"], 4), "batch": out["batch"]}  # fmt: skip
            meta = {"model_id": info["model_id"], "task": task, "timing": timing,
                    "params": {k: v for k, v in asdict(params).items() if v is not None}}  # fmt: skip
            body = await asyncio.to_thread(encode, out["frames"], given, truth, params.format, params.fps, meta)
            headers = {"X-Model-Id": info["model_id"], "X-Timing": json.dumps(timing)}
            return Response(body, media_type=FORMATS[params.format], headers=headers)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    async def _read(self, request, task: str) -> tuple[dict, np.ndarray | None]:
        """Parameters (query string, form fields or JSON) and the uploaded clip, reading at most the byte
        limit: a larger body is cut off with 413 while it streams in."""
        limit = self.options.limits.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "content-length", f"not a number: {length[:20]!r}")
            if int(length) > limit:
                raise ApiError(413, "body", f"{int(length)} bytes; the server takes at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body", f"more than {limit} bytes; the server takes at most {limit}")
            chunks.append(chunk)
        body = b"".join(chunks)
        params = dict(request.query_params)
        kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        limits = self.options.limits
        if not body:
            if task != "generate":
                raise ApiError(400, "file", "no clip: upload one (multipart field 'file') or send JSON 'frames'")
            return params, None
        if kind == "application/json":
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "body", "not valid JSON") from None
            if not isinstance(doc, dict):
                raise ApiError(422, "body", f"expected a JSON object, got {type(doc).__name__}")
            frames = doc.pop("frames", None)
            params.update(doc)
            if not _wants_clip(task, frames, "frames", 422, "missing: a list of base64 PNG/JPEG frames"):
                return params, None
            return params, await asyncio.to_thread(decode_json_frames, frames, limits)
        if kind == "multipart/form-data":
            form = await _parse_form(request, body)
            upload = None
            for name, value in form.multi_items():
                if hasattr(value, "read"):
                    if name != "file" or upload is not None:
                        raise ApiError(422, name, "one upload, in the field 'file'")
                    upload = await value.read()
                else:
                    params[name] = value
            if not _wants_clip(task, upload, "file", 400, "no clip: upload one in the multipart field 'file'"):
                return params, None
            return params, await asyncio.to_thread(decode_clip, upload, limits)
        if kind in ("", "application/x-www-form-urlencoded") and task == "generate":
            return params, None
        raise ApiError(415, "content-type", f"{kind or 'none'}: send multipart/form-data (field 'file') or "
                       "application/json (field 'frames')")  # fmt: skip

    def _frames_for(self, task: str, params: Params, clip, info: dict):
        """The frames the model works on, the given frames shown beside the result, and the true future
        (predict, when the upload is longer than the context)."""
        if task == "generate":
            return None, None, None
        clip = fit_to_model(clip, info, params.resize)
        tc = info.get("temporal_compression", 1)
        if task == "predict":
            context = params.context or min(len(clip), info["max_context"])
            if context > len(clip):
                raise ApiError(422, "context", f"{context} frames asked for, but the clip has {len(clip)}")
            if context % tc:
                raise ApiError(422, "context", f"must be a multiple of {tc} (the model's temporal compression)")
            params.context = context
            truth = clip[context : context + params.future] if len(clip) > context else None
            return clip[:context], clip[:context], truth
        if task == "interpolate":
            if len(clip) < 2 * tc:
                raise ApiError(422, "file", f"{len(clip)} frame(s); interpolation needs the first and the last "
                               f"({2 * tc} frames for this model)")  # fmt: skip
            ends = np.concatenate([clip[:tc], clip[-tc:]])
            return ends, None, None
        if len(clip) > info["frames"] or len(clip) % tc:
            raise ApiError(422, "file", f"{len(clip)} frames; refine takes up to {info['frames']}, a multiple of {tc}")
        return clip, None, None


# --------------------------------------------------------------------------------------- building
def build_app(options: ServeOptions):
    """The Serve application: ``Api`` composed with ``Model``, scaled as the options say."""
    model_opts: dict = {"ray_actor_options": {"num_cpus": options.cpus_per_replica,
                                              "num_gpus": options.gpus_per_replica}}  # fmt: skip
    if options.autoscale:
        lo, hi = options.autoscale
        model_opts["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": 4}
    else:
        model_opts["num_replicas"] = options.replicas
    model = Model.options(**model_opts).bind(options.export, options.device, options.max_batch_size,
                                             options.batch_wait_s)  # fmt: skip
    plain = asdict(options)
    api_opts: dict = {"num_cpus": 0.1}
    key = os.environ.get(options.api_key_env) if options.api_key_env else None
    if key:  # the ingress replicas read the key from their environment, set here from this process's
        api_opts["runtime_env"] = {"env_vars": {options.api_key_env: key}}
    return Api.options(ray_actor_options=api_opts).bind(model, plain)


def app_builder(args: dict):
    """For Serve config files (`serve run` / `serve deploy`): ``import_path: vdp_ray.serve.app:app_builder``
    with ``args`` holding ServeOptions fields (``export`` required)."""
    args = dict(args)
    limits = Limits(**args.pop("limits", {}))
    if "autoscale" in args and args["autoscale"] is not None:
        args["autoscale"] = tuple(args["autoscale"])
    return build_app(ServeOptions(**args, limits=limits))


__all__ = ["TASKS", "Api", "Model", "ServeOptions", "app_builder", "build_app"]


def serve_forever(options: ServeOptions, ready=None) -> None:
    """`vdp serve`: start (or join) Ray, start Serve's HTTP proxy on host:port, deploy, and serve until
    Ctrl-C. ``ready(url)`` is called once the application is up."""
    import math
    import signal
    import threading

    from ..export import Export
    from ..raytools import init_ray

    Export(options.export)  # a wrong path or a broken export fails here, before Ray starts
    options.api_key()  # a named but unset key variable too
    replicas = options.autoscale[1] if options.autoscale else options.replicas
    init_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(replicas * options.cpus_per_replica) + 1))
    serve.start(http_options={"host": options.host, "port": options.port,
                              "request_timeout_s": options.timeout_s + 30})  # fmt: skip
    serve.run(build_app(options), name="vdp", route_prefix="/")
    url = f"http://{options.host}:{options.port}/"
    if ready:
        ready(url)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.delete("vdp")
    serve.shutdown()
