"""The ingress deployment: FastAPI routes that read uploads within the byte limit, check every field, hand the
work to the model deployment and encode its answer; the browser page at ``/``. Clients get a 4xx naming the field
for anything wrong with what they sent."""

import asyncio
import hmac
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from ..latent import LatentFrameError, latent_frames
from .api import FORMATS, ApiError, Limits, Params, parse_params, schema
from .model import Job
from .options import ServeOptions, key_digest
from .responses import encode
from .uploads import decode_clip, decode_json_frames, model_fit

STATIC = Path(__file__).parent / "static"


def _fastapi_app() -> FastAPI:
    return FastAPI(
        title="vdp_ray",
        version="1",
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: /docs is ours, all served from here
        redoc_url=None,
        description="Video diffusion: predict the future of a clip, generate, interpolate, refine. Upload a "
        "clip as multipart (field `file`: mp4, webm, gif, or a zip of PNG/JPEG frames) or send JSON "
        "(`frames`: base64 PNG/JPEG). Every error is JSON `{error: {field, message, status}}` with a 4xx.",
    )


fastapi_app = _fastapi_app()


@fastapi_app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status)


def _request_body_doc(task: str) -> dict:
    """A route's request body in the OpenAPI document: the clip (a file, or JSON frames) and the task's fields."""
    props = schema(task)
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


def _hostname(netloc: str) -> str:
    """The host of a Host header or netloc, lower case, without port or IPv6 brackets."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _port(request) -> int | None:
    host = (request.headers.get("host") or "").strip()
    tail = host.rsplit("]", 1)[-1]
    if ":" in tail and tail.rsplit(":", 1)[1].isdigit():
        return int(tail.rsplit(":", 1)[1])
    return None


def _whole(frames: int, temporal_compression: int, field: str) -> None:
    """A number of frames must fill whole latent frames (``latent.latent_frames``), else 422 naming the field."""
    try:
        latent_frames(frames, temporal_compression, field)
    except LatentFrameError as exc:
        raise ApiError(422, exc.field, exc.message) from None


# Everything the deployments use is defined above them: Serve serializes a deployment class when it is
# decorated.
@serve.deployment(name="Api", max_ongoing_requests=256)
@serve.ingress(fastapi_app)
class Api:
    def __init__(self, model, options: dict, guard: dict | None = None):
        self.model = model
        self.options = ServeOptions(**{**options, "limits": Limits(**options["limits"])})
        self.guard = None if guard is None else (bytes.fromhex(guard["salt"]), guard["digest"])
        self.hosts = None if guard is not None else self.options.trusted_hosts()  # keyless: only these Host names
        self.info: dict | None = None

    async def model_info(self) -> dict:
        if self.info is None:
            self.info = await self.model.info.remote()
        return self.info

    # -------------------------------------------------------------------------------------- routes
    @fastapi_app.get("/", include_in_schema=False)
    async def page(self):
        return HTMLResponse((STATIC / "index.html").read_text())

    @fastapi_app.get("/docs", include_in_schema=False)
    async def docs(self):
        return HTMLResponse((STATIC / "docs.html").read_text())

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

    @fastapi_app.post(
        "/v1/interpolate",
        summary="Frames between the first and the last of a clip",
        openapi_extra=_request_body_doc("interpolate"),
    )
    async def interpolate(self, request: Request):
        return await self._handle("interpolate", request)

    @fastapi_app.post("/v1/refine", summary="A noisy clip, refined (SDEdit)", openapi_extra=_request_body_doc("refine"))
    async def refine(self, request: Request):
        return await self._handle("refine", request)

    # ------------------------------------------------------------------------------------ handling
    def _authorize(self, request) -> None:
        self._check_origin(request)
        if self.guard is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise ApiError(401, "api_key", "missing: send the key as 'Authorization: Bearer KEY' or 'X-API-Key'")
        salt, digest = self.guard
        if not hmac.compare_digest(key_digest(given, salt), digest):
            raise ApiError(401, "api_key", "wrong key")

    def _check_origin(self, request) -> None:
        """A keyless server answers only its own Host names (a DNS-rebinding page names another), and no request
        from a page of another origin (a cross-site form post or fetch) is served."""
        host = _hostname(request.headers.get("host") or "")
        if self.hosts is not None and host not in self.hosts:
            raise ApiError(
                403,
                "host",
                f"{host[:100] or 'no Host header'!r} is not a name this server answers (see vdp serve --allowed-hosts)",
            )
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            from urllib.parse import urlsplit

            parts = urlsplit(origin)
            same = _hostname(parts.netloc) == host and parts.port == _port(request)
            if not same and _hostname(parts.netloc) not in self.options.extra_hosts():
                raise ApiError(403, "origin", f"requests from pages of {origin[:100]!r} are not served here")
        elif origin == "null":
            raise ApiError(403, "origin", "requests from opaque origins (sandboxed pages, files) are not served")

    async def _handle(self, task: str, request: Request):
        try:
            self._authorize(request)
            info = await self.model_info()
            raw, upload = await self._read(request, task)
            params = parse_params(task, raw, self.options.limits, info)  # cheap checks before any decoding
            clip = None if upload is None else await asyncio.to_thread(self._decode, upload, params, info)
            frames, given, truth = self._frames_for(task, params, clip, info)
            del clip, upload  # the request holds only what the model and the answer need while it waits
            start = time.perf_counter()
            budget = self.options.limits.max_work_s or self.options.timeout_s  # the model replica prices the job
            try:
                job = Job(params, frames, timeout_s=self.options.timeout_s, work_s=budget)
                out = await asyncio.wait_for(self.model.remote(job), timeout=self.options.timeout_s)
            except asyncio.TimeoutError:
                raise ApiError(
                    504,
                    "timeout",
                    f"the model did not answer within {self.options.timeout_s:g} s; "
                    "ask for fewer steps or frames, or retry",
                ) from None
            if isinstance(out, Exception):
                raise out
            timing = {
                "total_s": round(time.perf_counter() - start, 4),
                "compute_s": round(out["compute_s"], 4),
                "queue_s": round(out["queue_s"], 4),
                "batch": out["batch"],
            }
            meta = {
                "model_id": info["model_id"],
                "task": task,
                "timing": timing,
                "params": {k: v for k, v in asdict(params).items() if v is not None},
            }
            fps = params.fps or 4.0
            body = await asyncio.to_thread(encode, out["frames"], given, truth, params.format, fps, meta)
            headers = {"X-Model-Id": info["model_id"], "X-Timing": json.dumps(timing)}
            return Response(body, media_type=FORMATS[params.format], headers=headers)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    def _decode(self, upload: tuple[str, object], params: Params, info: dict) -> np.ndarray:
        """The uploaded clip, each frame fitted to the model as it is decoded (off the event loop)."""
        field, payload = upload
        fit = model_fit(info, params.resize)
        if field == "frames":
            return decode_json_frames(payload, self.options.limits, fit=fit)
        return decode_clip(payload, self.options.limits, fit=fit)

    async def _read(self, request, task: str) -> tuple[dict, tuple[str, object] | None]:
        """Parameters (query string, form fields or JSON) and the upload, still encoded (``("file", bytes)`` or
        ``("frames", list)``), reading at most the byte limit: a larger body is cut off with 413 while it
        streams in."""
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
        if not body:
            if task != "generate":
                raise ApiError(400, "file", "no clip: upload one (multipart field 'file') or send JSON 'frames'")
            return params, None
        if kind == "application/json":
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "body", "not valid JSON") from None
            except RecursionError:
                raise ApiError(400, "body", "JSON nested too deeply") from None
            if not isinstance(doc, dict):
                raise ApiError(422, "body", f"expected a JSON object, got {type(doc).__name__}")
            frames = doc.pop("frames", None)
            params.update(doc)
            if not _wants_clip(task, frames, "frames", 422, "missing: a list of base64 PNG/JPEG frames"):
                return params, None
            return params, ("frames", frames)
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
            return params, ("file", upload)
        if kind in ("", "application/x-www-form-urlencoded") and task == "generate":
            return params, None
        raise ApiError(
            415,
            "content-type",
            f"{kind or 'none'}: send multipart/form-data (field 'file') or application/json (field 'frames')",
        )

    def _frames_for(self, task: str, params: Params, clip, info: dict):
        """The frames the model works on, the given frames shown beside the result, and the true future
        (predict, when the upload is longer than the context)."""
        if task == "generate":
            return None, None, None
        frames_per_latent = info.get("temporal_compression", 1)
        if task == "predict":
            context = params.context or min(len(clip), info["max_context"])
            if context > len(clip):
                raise ApiError(422, "context", f"{context} frames asked for, but the clip has {len(clip)}")
            _whole(context, frames_per_latent, "context")
            params.context = context
            params.future = params.future or info["frames"] - context  # default: the rest of the window
            truth = clip[context : context + params.future].copy() if len(clip) > context else None
            given = clip[:context].copy()  # copies: the rest of the upload is freed before the model runs
            return given, given, truth
        if task == "interpolate":
            if len(clip) < 2 * frames_per_latent:
                raise ApiError(
                    422,
                    "file",
                    f"{len(clip)} frame(s); interpolation needs the first and the last "
                    f"({2 * frames_per_latent} frames for this model)",
                )
            ends = np.concatenate([clip[:frames_per_latent], clip[-frames_per_latent:]])  # a copy
            return ends, None, None
        if len(clip) > info["frames"]:
            raise ApiError(422, "file", f"{len(clip)} frames; refine takes up to {info['frames']}")
        _whole(len(clip), frames_per_latent, "file")
        return clip, None, None
