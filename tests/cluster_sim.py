"""A Ray cluster of two nodes on this machine (ray.cluster_utils.Cluster: a head and a second raylet), and a
training run on it with one worker per node. Run as a child process by tests/train/test_multinode.py, so the
test session's own Ray stays as it is:

    python tests/cluster_sim.py SHARDS RUN_DIR [overrides...]

Prints one JSON line: the export folder, the cluster's node ids.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(shards: str, run_dir: str, *overrides: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from vdp_ray.config import load_config
    from vdp_ray.train import fit

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        cfg = load_config(ROOT / "experiments" / "tiny_unet.yaml", [
            f"data.train={shards}/train", f"data.val={shards}/val", f"run.dir={run_dir}", "run.name=multinode",
            "train.workers=2", "train.cpus_per_worker=1", "train.placement=strict_spread", "train.max_steps=10",
            "train.batch_size=4", "train.val_every=5", "train.checkpoint_every=5", "train.log_every=5",
            "train.preview_every=1000", "train.val_batches=1", "train.warmup_steps=2", *overrides,
        ])  # fmt: skip
        exports = fit(cfg)
        print(json.dumps({"export": str(exports[cfg.train.stages[-1]]), "nodes": nodes}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
