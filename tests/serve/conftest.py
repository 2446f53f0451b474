"""A real Ray Serve application on the test session's local Ray, over real HTTP on loopback: the tiny
random-weight U-Net export (6 grayscale frames of 16x16) behind an API key, plus an open second app with a
tiny request time limit (route /slow) for the timeout path."""

import os
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from support.exports import unet_export
from support.hostile import DECODED_BYTES
from support.serving import free_port, wait_ready

KEY_ENV, KEY = "VDP_TEST_API_KEY", "s3cret-key"


@dataclass
class Server:
    url: str
    key: str
    export: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kw})

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")  # torn down after its module: Serve's replicas must not hold CPUs later tests need
def served(ray_local, tmp_path_factory):
    from ray import serve

    from vdp_ray.serve.api import Limits
    from vdp_ray.serve.app import ServeOptions, build_app

    export = unet_export(tmp_path_factory.mktemp("serve"))
    port = free_port()
    os.environ[KEY_ENV] = KEY
    limits = Limits(
        max_upload_bytes=1_000_000, max_frames=64, max_pixels=128 * 128, max_steps=50, max_decoded_bytes=DECODED_BYTES
    )
    options = ServeOptions(
        export=str(export), port=port, api_key_env=KEY_ENV, cpus_per_replica=0.5, limits=limits, batch_wait_s=0.1
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(options), name="vdp", route_prefix="/")
    # the 504 path: no work estimate refuses the request first
    slow = ServeOptions(
        export=str(export), port=port, cpus_per_replica=0.5, timeout_s=0.001, limits=replace(limits, max_work_s=3600.0)
    )
    serve.run(build_app(slow), name="slow", route_prefix="/slow")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    wait_ready(url + "/slow")
    yield Server(url=url, key=KEY, export=export)
    serve.shutdown()
