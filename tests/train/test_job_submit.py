"""`ray job submit -- vdp train ...` against a real Ray head started here on loopback."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vdp_ray.export import Export

pytestmark = pytest.mark.cluster  # a Ray head of its own
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ray_head():
    """A head node of its own (own ports and temp dir), stopped with SIGINT, which ends what it started."""
    gcs, dash, agent, agent_grpc, metrics, runtime_env, client = free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="vdp-ray-")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--ray-client-server-port={client}",
            "--num-cpus=4",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and head.poll() is None:
        probe = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        head.send_signal(signal.SIGINT)
        pytest.fail("the Ray head did not come up: " + (head.stdout.read() if head.stdout else ""))
    yield address, env
    head.send_signal(signal.SIGINT)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_and_exports(ray_head, digits, tmp_path):
    address, env = ray_head
    run = tmp_path / "job_run"
    entry = [
        sys.executable,
        "-m",
        "vdp_ray.cli",
        "train",
        str(ROOT / "experiments" / "tiny_unet.yaml"),
        f"data.train={digits / 'train'}",
        "data.val=null",
        f"run.dir={run}",
        "train.max_steps=6",
        "train.batch_size=4",
        "train.checkpoint_every=3",
        "train.log_every=3",
        "train.val_every=3",
    ]
    submit = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--submission-id",
            "vdp-test-job",
            "--no-wait",
            "--",
            *entry,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stderr
    status = ""
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [str(BIN / "ray"), "job", "status", "--address", address, "vdp-test-job"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = (probe.stdout + probe.stderr).lower()  # e.g. "Job 'vdp-test-job' succeeded"
        status = next((s for s in ("succeeded", "failed", "stopped") if f"' {s}" in out), "")
        if status:
            break
        time.sleep(5)
    logs = subprocess.run(
        [str(BIN / "ray"), "job", "logs", "--address", address, "vdp-test-job"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert status == "succeeded", logs[-3000:]
    assert "unet3d: export in" in logs
    export = Export(run / "export")
    assert export.meta["steps"] == 6
    assert [json.loads(x)["step"] for x in (run / "logs" / "unet3d.jsonl").read_text().splitlines()] == [3, 6]
