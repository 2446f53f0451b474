"""vdp_ray: video diffusion models that predict the future of a video, trained and served on Ray."""

__version__ = "0.1.0"
