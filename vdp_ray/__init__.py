"""vdp_ray: video diffusion models that predict the future of a video, trained and served on Ray."""

from .version import __version__

__all__ = ["__version__"]


def __getattr__(name: str):
    # `vdp_ray.Predictor` without importing torch on `import vdp_ray` (the CLI's --help stays fast)
    if name in ("Predictor", "PredictError"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'vdp_ray' has no attribute {name!r}")
