"""Training across two Ray nodes (a simulated cluster on this machine): one worker per node, the run folder on
storage both nodes see, the checkpoint merging the DeepSpeed shards each node wrote, and a right export."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vdp_ray.export import Export, load_state_dict

SIM = Path(__file__).resolve().parents[1] / "support" / "cluster_sim.py"
pytestmark = pytest.mark.cluster  # simulated nodes: Ray processes of their own
STEPS = 160  # the elastic run's length (below)


def test_elastic_training_shrinks_when_a_node_is_lost_and_grows_back_when_one_joins(digits, tmp_path):
    """train.workers=[1, 2]: the second node is removed at step 8; training restarts from the last checkpoint on
    the one node left, goes on with one worker, and returns to two when a replacement node joins."""
    shards = digits
    run = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    # one worker must not finish the run before the replacement node is noticed: Ray takes ~17 s from the node's
    # joining to stopping the one-worker group (on this 2-core machine, whatever the step time), which one worker
    # spent on 50 steps here; a 2x faster CI machine ran all of a 64-step run in it
    cmd = [sys.executable, str(SIM), "--lose-node", "elastic", str(shards), str(run), f"train.max_steps={STEPS}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(re.findall(r'\{"export".*', proc.stdout)[-1])

    rows = [json.loads(x) for x in (run / "logs" / "unet3d.jsonl").read_text().splitlines()]
    before = [r for r in rows if r["time"] < result["removed_at"]]
    shrunk = [r for r in rows if result["removed_at"] < r["time"] < result["replaced_at"]]
    grown = [r for r in rows if r["time"] > result["replaced_at"] and r["workers"] == 2]
    assert before and all(r["workers"] == 2 for r in before)
    assert shrunk and all(r["workers"] == 1 for r in shrunk), "training did not go on with one worker"
    assert grown and grown[-1]["step"] == STEPS, "training did not scale back to two workers and finish"
    # each restart resumed from a checkpoint (every 4 steps) at or before the last step logged before it
    log = (run / "logs" / "unet3d.log").read_text()
    resumed = [int(x.split("resumed unet3d from step ")[1].split()[0]) for x in log.splitlines() if "resumed" in x]
    assert len(resumed) >= 2 and all(s % 4 == 0 for s in resumed), resumed
    assert resumed[0] <= result["removed_at_step"]
    assert resumed[-1] <= max(r["step"] for r in rows if r["workers"] == 1)
    assert "resuming on 1" in log and "resuming on 2" in log  # the worker-count change was said, both ways

    workers = json.loads((run / "logs" / "unet3d-workers.json").read_text())
    assert len({w["node_id"] for w in workers}) == 2  # the last group spans the head and the replacement node
    export = Export(result["export"])
    assert export.meta["steps"] == STEPS
    last = sorted(p for p in (run / "ray" / "lose-unet3d").glob("checkpoint_*") if p.is_dir())[-1]
    model = export.model()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in load_state_dict(last / "ema.safetensors").items())


def test_training_spreads_over_two_nodes_and_merges_their_checkpoint_shards(digits, tmp_path):
    """Two Ray nodes like real hosts: each in its own network namespace with its own address on a veth link,
    joined with `ray start --address` (needs root / CAP_NET_ADMIN); where namespaces are not allowed, two raylets
    on loopback (ray.cluster_utils). One worker per node (strict_spread), the run folder on storage both see."""
    shards = digits
    run = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    sim = [sys.executable, str(SIM)]
    netns = os.geteuid() == 0 and shutil.which("ip") is not None
    proc = subprocess.run(
        [*sim, *(["--netns"] if netns else []), str(shards), str(run)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode == 77:  # namespaces refused here: the same run on loopback
        netns = False
        proc = subprocess.run([*sim, str(shards), str(run)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(re.findall(r'\{"export".*', proc.stdout)[-1])
    assert len(result["nodes"]) == 2

    workers = json.loads((run / "logs" / "unet3d-workers.json").read_text())
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert {w["node_id"] for w in workers} == set(result["nodes"])  # one rank on each node
    if netns:  # two hosts with their own addresses, and the ranks talked over the link between them
        assert result["ips"] == sorted(w["ip"] for w in workers) == ["10.231.0.1", "10.231.0.2"]

    checkpoints = sorted(p for p in (run / "ray" / "multinode-unet3d").glob("checkpoint_*") if p.is_dir())
    last = checkpoints[-1]
    # every rank wrote its own files on its own node; Ray merged them into one checkpoint folder
    assert (last / "rng_rank0.pt").is_file() and (last / "rng_rank1.pt").is_file()
    shards_written = sorted(p.name for p in (last / "ds").glob("*optim_states.pt"))
    assert any("rank_0" in n for n in shards_written) and any("rank_1" in n for n in shards_written), shards_written

    export = Export(result["export"])
    assert export.meta["steps"] == 10
    ema = load_state_dict(last / "ema.safetensors")
    model = export.model()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())
