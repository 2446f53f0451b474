"""Training across two Ray nodes (a simulated cluster on this machine): one worker per node, the run folder on
storage both nodes see, the checkpoint merging the DeepSpeed shards each node wrote, and a right export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media import digit_shards

from vdp_ray.export import Export, load_state_dict

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_training_spreads_over_two_nodes_and_merges_their_checkpoint_shards(tmp_path):
    shards = digit_shards(tmp_path / "digits", num_clips=32)
    run = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cluster_sim.py"), str(shards), str(run)],
                          capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert len(result["nodes"]) == 2

    workers = json.loads((run / "logs" / "unet3d-workers.json").read_text())
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert {w["node_id"] for w in workers} == set(result["nodes"])  # one rank on each node

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
