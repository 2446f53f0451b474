"""Serving: `vdp serve` (Ray Serve HTTP API + browser page). ``api`` holds the request and response logic
without Ray; ``app`` the Serve deployments. Import ``app`` only where Ray Serve runs."""

from .api import ApiError, Limits

__all__ = ["ApiError", "Limits"]
