"""What `vdp serve` is asked for: the export, where to listen, how to scale, and the limits of one request. The
same dataclass is the command line (``options.arg``) and what ``app_builder`` takes from a Serve config file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..options import REQUIRED, OptionError, arg
from ..raytools import PlacementError, cluster_has_gpus, gpu_placement
from ..vocab import INFERENCE_PRECISIONS
from .api import Limits


def parse_autoscale(text: str) -> tuple[int, int]:
    lo, _, hi = str(text).partition(":")
    if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) <= int(hi)):
        raise ValueError(f"expected MIN:MAX with 0 < MIN <= MAX, got {text!r}")
    return int(lo), int(hi)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def key_digest(key: str, salt: bytes) -> str:
    """What the ingress compares requests against, so the key itself never enters Serve's deployment config."""
    import hashlib
    import hmac

    return hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()


def _ms(text: str) -> float:
    return float(text) / 1000


@dataclass
class ServeOptions:
    export: str = arg(REQUIRED, "an export folder (runs/x/export)", flag="--checkpoint")
    host: str = arg("127.0.0.1", "address to bind (0.0.0.0 = all)")
    port: int = arg(8000, "port")
    replicas: int = arg(1, "model replicas", exclusive="scale")
    autoscale: tuple[int, int] | None = arg(
        None,
        "autoscale model replicas between MIN and MAX",
        metavar="MIN:MAX",
        parse=parse_autoscale,
        exclusive="scale",
    )
    api_key_env: str | None = arg(None, "require the key held in this environment variable", metavar="NAME")
    insecure: bool = arg(False, "allow binding an address other than loopback without an API key")
    allowed_hosts: str | None = arg(
        None,
        "comma-separated names a keyless server answers besides loopback and "
        "--host, and page origins it accepts (a proxy's public name)",
        metavar="NAMES",
    )
    device: str = arg("auto", "auto (a GPU per replica when the Ray cluster has GPUs), cpu, cuda")
    precision: str = arg(
        "auto",
        "auto (the export's training precision on GPUs, fp32 on CPUs), fp16, bf16, fp32",
        choices=INFERENCE_PRECISIONS,
    )
    cpus_per_replica: float = arg(1.0, "CPUs per model replica")
    gpus_per_replica: float | None = arg(
        None, "GPUs per model replica (default: 1 when it runs on CUDA; 0.5 lets two replicas share one)"
    )
    max_batch_size: int = arg(8, "requests per batched call (1 = no batching)")
    batch_wait_s: float = arg(
        0.1, "wait to fill a batch, in ms", flag="--batch-wait-ms", parse=_ms, show=lambda s: f"{s * 1000:g} ms"
    )
    timeout_s: float = arg(120.0, "per-request time limit, in s", flag="--timeout")
    limits: Limits = field(default_factory=Limits)

    def check(self) -> None:
        """Refuse what cannot serve, naming the option (before Ray starts)."""
        for name in ("replicas", "max_batch_size", "port"):
            if getattr(self, name) < 1:
                raise OptionError(name, "must be at least 1")
        if not self.api_key_env and not self.insecure and not is_loopback(self.host):
            raise OptionError(
                "host",
                f"{self.host} is reachable from other machines and no --api-key-env is "
                "set: anyone there could use this server; set --api-key-env NAME, or pass "
                "--insecure",
            )
        if self.limits.max_frames < 1:
            raise OptionError("max_frames", "must be at least 1")
        if self.autoscale is not None:
            parse_autoscale(f"{self.autoscale[0]}:{self.autoscale[1]}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise OptionError("gpus_per_replica", "must be >= 0")
        try:  # what needs no cluster to refuse (a GPU reserved for a CPU replica)
            gpu_placement(self.device, self.gpus_per_replica, has_gpus=lambda: None)
        except PlacementError as exc:
            raise OptionError("device", str(exc)) from None

    def placement(self) -> tuple[str, float]:
        """(device, GPUs) of each model replica on the connected cluster: a GPU is used only where reserved."""
        try:
            return gpu_placement(self.device, self.gpus_per_replica, cluster_has_gpus)
        except PlacementError as exc:
            raise OptionError("device", str(exc)) from None

    def trusted_hosts(self) -> frozenset[str] | None:
        """Host names (without port) a keyless server answers; None: any (an --insecure wildcard bind)."""
        extra = self.extra_hosts()
        if self.host in ("0.0.0.0", "::") and not extra:
            return None
        return frozenset({"localhost", "127.0.0.1", "::1", self.host.lower(), *extra})

    def extra_hosts(self) -> frozenset[str]:
        """--allowed-hosts: names answered (keyless) and page origins accepted (a proxy's public name)."""
        return frozenset(h.strip().lower() for h in (self.allowed_hosts or "").split(",") if h.strip())

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"--api-key-env {self.api_key_env}: that environment variable is not set or empty")
        return key
