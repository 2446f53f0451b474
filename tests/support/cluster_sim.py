"""A Ray cluster of two nodes on this machine (ray.cluster_utils.Cluster: a head and a second raylet), and a
training run on it with one worker per node. Run as a child process by tests/train/test_multinode.py, so the
test session's own Ray stays as it is:

    python tests/support/cluster_sim.py SHARDS RUN_DIR [overrides...]
    python tests/support/cluster_sim.py --lose-node fixed|elastic SHARDS RUN_DIR [overrides...]
    python tests/support/cluster_sim.py --netns SHARDS RUN_DIR [overrides...]   # as root; exit 77 where not allowed

Prints one JSON line: the export folder, the cluster's node ids; with --lose-node also when the second node
was removed mid-run, when a replacement joined, and when training stepped again.

--netns runs the two nodes like real hosts: each in its own network namespace (iproute2 `ip netns`) with its
own address on a veth pair (10.231.0.1 head, 10.231.0.2 worker), started with `ray start` and joined over
that link; the driver runs on the head. Only the file system is shared, as an NFS run folder would be.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _logged_steps(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "logs" / "unet3d.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def lose_node(mode: str, shards: str, run_dir: str, *overrides: str) -> None:
    """Remove the second node (and its worker) mid-run. fixed: 2 workers always; a replacement node joins
    after a few seconds and the group restarts from the last checkpoint. elastic: train.min_workers=1, so
    training goes on with one worker and grows back to two when the replacement joins."""
    import threading
    import time

    import ray
    from ray.cluster_utils import Cluster

    from vdp_ray.config import load_config
    from vdp_ray.train import fit

    # 3 CPUs a node and 2 a worker: a node holds one worker plus room for Ray Data, so losing a node leaves
    # room for exactly one worker (what an elastic run shrinks to; a fixed one waits for a replacement)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    second = cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    events: dict = {}
    try:
        extra = ["train.workers=[1,2]", "train.resize_check_s=1"] if mode == "elastic" else []
        cfg = load_config(
            ROOT / "experiments" / "tiny_unet.yaml",
            [
                f"data.train={shards}/train",
                f"data.val={shards}/val",
                f"run.dir={run_dir}",
                "run.name=lose",
                "train.workers=2",
                "train.cpus_per_worker=2",
                "train.placement=spread",
                "train.max_steps=80",
                "train.batch_size=4",
                "train.val_every=1000",
                "train.checkpoint_every=4",
                "train.log_every=2",
                "train.preview_every=1000",
                "train.val_batches=1",
                "train.warmup_steps=2",
                "train.max_failures=3",
                "train.select_by=last",
                *extra,
                *overrides,
            ],
        )
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(fit(cfg)), daemon=True)
        thread.start()
        while thread.is_alive() and not any(m["step"] >= 8 for m in _logged_steps(run_dir)):
            time.sleep(0.2)
        events["removed_at_step"] = max(m["step"] for m in _logged_steps(run_dir))
        events["removed_at"] = time.time()
        cluster.remove_node(second)
        if mode == "elastic":  # training goes on with one worker before the node comes back

            def stepped() -> bool:
                return any(
                    m["time"] > events["removed_at"] and m["step"] > events["removed_at_step"]
                    for m in _logged_steps(run_dir)
                )

            while thread.is_alive() and not stepped():
                time.sleep(0.2)
            time.sleep(1)  # the replacement joins while the one worker still has most of its steps ahead
        else:
            time.sleep(5)
        events["replaced_at"] = time.time()
        cluster.add_node(num_cpus=3)
        thread.join(timeout=600)
        after = [m for m in _logged_steps(run_dir) if m["time"] > events["removed_at"]]
        events["first_step_after"] = after[0]["step"] if after else None
        events["recovery_s"] = after[0]["time"] - events["removed_at"] if after else None
        print(json.dumps({"export": str(result.get("unet3d")), "nodes": len(ray.nodes()), **events}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


NETNS_SKIP = 77  # exit status: this machine does not allow network namespaces
SUBNET = "10.231.0"


def _sh(*cmd: str, netns: str | None = None) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    return subprocess.run(full, capture_output=True, text=True)


def netns(shards: str, run_dir: str, *overrides: str) -> None:
    """Two namespaces joined by a veth pair, a Ray node in each, training driven from the head's namespace."""
    tag = f"{os.getpid() % 100000}"
    spaces = {"head": f"vdp-h{tag}", "worker": f"vdp-w{tag}"}
    links = {"head": f"vh{tag}", "worker": f"vw{tag}"}
    ips = {"head": f"{SUBNET}.1", "worker": f"{SUBNET}.2"}
    made: list[str] = []
    try:
        for space in spaces.values():
            if (r := _sh("ip", "netns", "add", space)).returncode:
                print(f"network namespaces not allowed here: {r.stderr.strip()}")
                sys.exit(NETNS_SKIP)
            made.append(space)
        steps = [
            (
                "ip",
                "link",
                "add",
                links["head"],
                "netns",
                spaces["head"],
                "type",
                "veth",
                "peer",
                "name",
                links["worker"],
                "netns",
                spaces["worker"],
            ),
        ]
        for cmd in steps:
            if (r := _sh(*cmd)).returncode:
                print(f"could not link the namespaces: {r.stderr.strip()}")
                sys.exit(NETNS_SKIP)
        for role, space in spaces.items():
            for cmd in (
                ("ip", "addr", "add", f"{ips[role]}/24", "dev", links[role]),
                ("ip", "link", "set", links[role], "up"),
                ("ip", "link", "set", "lo", "up"),
            ):
                if (r := _sh(*cmd, netns=space)).returncode:
                    sys.exit(f"{' '.join(cmd)} in {space}: {r.stderr.strip()}")

        temp = f"/tmp/vdpns{tag}"  # Ray's socket paths must stay short
        port = 6390
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        common = ["--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}"]
        for role in ("head", "worker"):
            where = (
                ["--head", f"--port={port}", "--include-dashboard=false"]
                if role == "head"
                else [f"--address={ips['head']}:{port}"]
            )
            # Gloo binds to the namespace's own link (its host name would resolve to the root namespace's address)
            node_env = {**env, "GLOO_SOCKET_IFNAME": links[role]}
            cmd = [
                "ip",
                "netns",
                "exec",
                spaces[role],
                ray_bin,
                "start",
                *where,
                f"--node-ip-address={ips[role]}",
                *common,
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, env=node_env, timeout=180)
            if r.returncode:
                sys.exit(f"ray start ({role}) failed:\n{(r.stdout + r.stderr)[-3000:]}")
        driver = [
            "ip",
            "netns",
            "exec",
            spaces["head"],
            sys.executable,
            __file__,
            "--address",
            f"{ips['head']}:{port}",
            shards,
            run_dir,
            *overrides,
        ]
        r = subprocess.run(driver, env={**env, "GLOO_SOCKET_IFNAME": links["head"]}, timeout=900)
        if r.returncode:
            sys.exit(r.returncode)
    finally:
        for space in made:  # stop every process in our namespaces (never `ray stop`: it stops every Ray here)
            for _ in range(20):
                pids = [int(p) for p in _sh("ip", "netns", "pids", space).stdout.split()]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM if _ < 10 else signal.SIGKILL)
                time.sleep(0.5)
            _sh("ip", "netns", "del", space)
        shutil.rmtree(f"/tmp/vdpns{tag}", ignore_errors=True)


def main(shards: str, run_dir: str, *overrides: str, address: str | None = None) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from vdp_ray.config import load_config
    from vdp_ray.train import fit

    cluster = None
    if address is None:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
    ray.init(address=address or cluster.address, logging_level="ERROR")
    try:
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        cfg = load_config(
            ROOT / "experiments" / "tiny_unet.yaml",
            [
                f"data.train={shards}/train",
                f"data.val={shards}/val",
                f"run.dir={run_dir}",
                "run.name=multinode",
                "train.workers=2",
                "train.cpus_per_worker=1",
                "train.placement=strict_spread",
                "train.max_steps=10",
                "train.batch_size=4",
                "train.val_every=5",
                "train.checkpoint_every=5",
                "train.log_every=5",
                "train.preview_every=1000",
                "train.val_batches=1",
                "train.warmup_steps=2",
                "train.select_by=last",
                *overrides,
            ],
        )
        exports = fit(cfg)
        ips = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
        print(json.dumps({"export": str(exports[cfg.train.stages[-1]]), "nodes": nodes, "ips": ips}), flush=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "--lose-node":
        lose_node(*sys.argv[2:])
    elif sys.argv[1] == "--netns":
        netns(*sys.argv[2:])
    elif sys.argv[1] == "--address":
        main(*sys.argv[3:], address=sys.argv[2])
    else:
        main(*sys.argv[1:])
