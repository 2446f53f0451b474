"""`vdp serve`: the Predictor behind an HTTP API on Ray Serve.

Two deployments: ``Api`` (``ingress.py``: the FastAPI routes, reading uploads, checking every field, encoding
results, the browser page at ``/``) composed with ``Model`` (``model.py``: wraps ``Predictor``, batches requests
that can share a sampling call). This module builds the application and serves it.

    from vdp_ray.serve.app import ServeOptions, build_app
    serve.run(build_app(ServeOptions(export="runs/demo/run/export")))
"""

import os
from dataclasses import asdict

from ray import serve

from ..vocab import TASKS
from .api import Limits
from .ingress import Api
from .model import Model
from .options import ServeOptions, key_digest


def build_app(options: ServeOptions):
    """The Serve application: ``Api`` composed with ``Model``, scaled as the options say."""
    device, gpus = options.placement()
    model_opts: dict = {"ray_actor_options": {"num_cpus": options.cpus_per_replica, "num_gpus": gpus}}
    if options.autoscale:
        lo, hi = options.autoscale
        model_opts["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": 4}
    else:
        model_opts["num_replicas"] = options.replicas
    model = Model.options(**model_opts).bind(
        options.export, device, options.max_batch_size, options.batch_wait_s, options.precision
    )
    plain = asdict(options)
    key = options.api_key()
    guard = None
    if key is not None:  # the ingress gets a salted digest: the key is in no deployment config, env or log
        salt = os.urandom(16)
        guard = {"salt": salt.hex(), "digest": key_digest(key, salt)}
    return Api.options(ray_actor_options={"num_cpus": 0.1}).bind(model, plain, guard)


def app_builder(args: dict):
    """For Serve config files (`serve run` / `serve deploy`): ``import_path: vdp_ray.serve.app:app_builder``
    with ``args`` holding ServeOptions fields (``export`` required)."""
    args = dict(args)
    limits = Limits(**args.pop("limits", {}))
    if "autoscale" in args and args["autoscale"] is not None:
        args["autoscale"] = tuple(args["autoscale"])
    return build_app(ServeOptions(**args, limits=limits))


def serve_forever(options: ServeOptions, ready=None) -> None:
    """`vdp serve`: start (or join) Ray, start Serve's HTTP proxy on host:port, deploy, and serve until
    Ctrl-C. ``ready(url)`` is called once the application is up."""
    import math
    import signal
    import threading

    from ..export import Export
    from ..raytools import init_ray

    options.check()
    Export(options.export)  # a wrong path or a broken export fails here, before Ray starts
    options.api_key()  # a named but unset key variable too
    replicas = options.autoscale[1] if options.autoscale else options.replicas
    import ray

    init_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(replicas * options.cpus_per_replica) + 1))
    try:
        serve.start(
            http_options={"host": options.host, "port": options.port, "request_timeout_s": options.timeout_s + 30}
        )
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
    finally:  # an embedded Ray goes down whole (dashboard, agents); on a cluster this only disconnects
        ray.shutdown()


__all__ = ["TASKS", "Api", "Model", "ServeOptions", "app_builder", "build_app", "serve_forever"]
