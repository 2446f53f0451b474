"""A real Ray Serve application on the test session's local Ray, over real HTTP on loopback: the tiny
random-weight U-Net export (6 grayscale frames of 16x16) behind an API key, plus an open second app with a
tiny request time limit (route /slow) for the timeout path."""

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from exports import unet_export

KEY_ENV, KEY = "VDP_TEST_API_KEY", "s3cret-key"


@dataclass
class Server:
    url: str
    key: str
    export: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not become ready in {seconds} s")


@pytest.fixture(scope="session")
def served(ray_local, tmp_path_factory):
    from ray import serve

    from vdp_ray.serve.api import Limits
    from vdp_ray.serve.app import ServeOptions, build_app

    export = unet_export(tmp_path_factory.mktemp("serve"))
    port = free_port()
    os.environ[KEY_ENV] = KEY
    limits = Limits(max_upload_bytes=1_000_000, max_frames=64, max_pixels=128 * 128, max_steps=50)
    options = ServeOptions(export=str(export), port=port, api_key_env=KEY_ENV, cpus_per_replica=0.5,
                           limits=limits, batch_wait_s=0.1)  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(options), name="vdp", route_prefix="/")
    slow = ServeOptions(export=str(export), port=port, cpus_per_replica=0.5, limits=limits, timeout_s=0.001)
    serve.run(build_app(slow), name="slow", route_prefix="/slow")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    wait_ready(url + "/slow")
    yield Server(url=url, key=KEY, export=export)
    serve.shutdown()
