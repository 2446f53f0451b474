"""Stopping a command that started a Ray of its own stops that Ray: none of its processes (GCS, raylet, dashboard,
agents, workers) is left running after SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from support.runs import ROOT
from support.serving import free_port

pytestmark = pytest.mark.cluster  # `vdp train` as a user runs it: a subprocess with its own Ray


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


STOPS = [("train", signal.SIGTERM), ("serve", signal.SIGTERM), ("serve", signal.SIGINT)]


@pytest.mark.parametrize(("verb", "sig"), STOPS)
def test_a_stopped_command_leaves_none_of_its_ray_running(verb, sig, digits, tmp_path):
    """`vdp train` mid-training and `vdp serve` while serving, each with a Ray of its own: SIGTERM (or Ctrl-C) ends
    the command and every process of its Ray (GCS, raylet, dashboard, agents, workers)."""
    from support.exports import unet_export

    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    if verb == "train":
        args = [
            str(ROOT / "experiments" / "tiny_unet.yaml"),
            f"data.train={digits / 'train'}",
            f"data.val={digits / 'val'}",
            f"run.dir={tmp_path / 'run'}",
            "train.max_steps=5000",
            "train.workers=1",
            "train.log_every=1",
        ]
        ready = "step 2/5000"
    else:
        args = ["--checkpoint", str(unet_export(tmp_path)), "--port", str(free_port()), "--cpus-per-replica", "0.5"]
        ready = "Ctrl-C stops"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdp_ray.cli", verb, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen, deadline = [], time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if ready in line:
            break
    assert any(ready in line for line in seen), "".join(seen[-40:])
    ray_side = psutil.Process(proc.pid).children(recursive=True)
    assert any("raylet" in cmdline(p) for p in ray_side), "a Ray of its own"
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=180)
    _, alive = psutil.wait_procs(ray_side, timeout=60)
    left = [cmdline(p)[:120] for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, (left, rest[-2000:])
