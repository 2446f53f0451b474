"""Serving: `vdp serve` (Ray Serve HTTP API + browser page).

Without Ray: ``api`` (the error, the limits, a request's typed parameters), ``uploads`` (reading clients' clips),
``responses`` (encoding results), ``options`` (what `vdp serve` is asked for). With Ray Serve: ``model`` (the
Predictor deployment), ``ingress`` (the FastAPI deployment), ``app`` (building and serving them). Import those
three only where Ray Serve runs."""

from .api import ApiError, Limits

__all__ = ["ApiError", "Limits"]
