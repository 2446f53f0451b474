"""`vdp serve`: its parser generated from ``ServeOptions`` (the same dataclass a Serve config file fills)."""

from __future__ import annotations

import sys

from ..options import declare, from_args
from ..serve.options import ServeOptions


def add_serve(p) -> None:
    declare(
        p,
        ServeOptions,
        run_serve,
        "Serve an export over HTTP on Ray Serve: POST /v1/predict|generate|interpolate|refine, GET /v1/model, "
        "/healthz, API docs at /docs and a browser page at /. Without RAY_ADDRESS it starts an embedded Ray; with "
        "it, it deploys to that cluster.",
    )


def run_serve(args) -> int:
    from ..serve.app import serve_forever

    options = from_args(ServeOptions, args)
    try:
        serve_forever(
            options, ready=lambda url: print(f"vdp serve: {url} (API docs {url}docs); Ctrl-C stops", flush=True)
        )
    except (ValueError, FileNotFoundError) as exc:
        if hasattr(exc, "field"):  # an OptionError: the command line names the flag
            raise
        print(f"vdp serve: {exc}", file=sys.stderr)
        return 2
    return 0


PARSERS = {"serve": add_serve}
