"""`vdp serve` under load on loopback: latency percentiles and requests/s with dynamic batching on and off.

    python experiments/bench/serve.py [--export runs/demo/run/export] [--clients 16] [--requests 128]
                                      [--steps 10] [--future 4]

For each setting (max_batch_size 8, then 1 = off) it deploys the same export on an embedded Ray (one model
replica, one CPU), waits for /healthz, sends a warm-up round, then `--requests` POST /v1/predict requests from
`--clients` concurrent clients (httpx, one connection each), each a 4-frame clip from the model's own data
size (no seed, so requests may share a call). Target: batching >= 3x the throughput at equal or better p99.
Also prints the Predictor's own cost per clip at batch 1..16 (the ceiling of what batching can gain).
Prints a Markdown table for experiments/bench/RESULTS.md.
"""

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import httpx
import numpy as np
from support.serving import free_port, wait_ready
from support.videos import zip_of


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_load(url: str, body: bytes, fields: dict, clients: int, requests: int) -> dict:
    def one(_):
        start = time.perf_counter()
        with httpx.Client(timeout=600) as c:
            r = c.post(url + "/v1/predict", files={"file": ("clip.zip", body, "application/zip")}, data=fields)
        timing = json.loads(r.headers.get("x-timing", "{}"))
        return time.perf_counter() - start, r.status_code, timing.get("batch", 0)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm-up round
        start = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    latencies = [r[0] for r in results]
    return {
        "requests": requests,
        "errors": sum(1 for r in results if r[1] != 200),
        "rps": requests / wall,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "mean_batch": statistics.mean(r[2] for r in results),
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", default="runs/demo/run/export")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--future", type=int, default=4)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 8, 1])
    ap.add_argument("--batch-wait-ms", type=float, default=100.0)
    args = ap.parse_args()

    import ray
    from ray import serve

    from vdp_ray.predict import Predictor
    from vdp_ray.serve.app import ServeOptions, build_app

    predictor = Predictor.from_export(args.export)
    info = predictor.info()
    h, w = info["size"]
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (info["context_frames"], h, w, info["channels"]), dtype=np.uint8)
    body = zip_of(clip)
    fields = {"future": str(args.future), "steps": str(args.steps), "format": "npz"}

    ceiling = {}
    for n in (1, 2, 4, 8, 16):  # the model alone, one thread (as in a 1-CPU replica)
        import torch

        torch.set_num_threads(1)
        batch = np.repeat(clip[None], n, axis=0)
        predictor.predict(batch, args.future, steps=args.steps)
        start = time.perf_counter()
        predictor.predict(batch, args.future, steps=args.steps)
        ceiling[n] = (time.perf_counter() - start) / n
    print("model alone, s per clip by batch:", {n: round(s, 3) for n, s in ceiling.items()}, flush=True)

    ray.init(address="local", num_cpus=4, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    rows = []
    for size in args.batch_sizes:
        options = ServeOptions(
            export=args.export,
            port=port,
            cpus_per_replica=1.0,
            max_batch_size=size,
            batch_wait_s=args.batch_wait_ms / 1000 if size > 1 else 0.0,
            timeout_s=600,
        )
        serve.run(build_app(options), name="bench", route_prefix="/")
        wait_ready(url)
        result = run_load(url, body, fields, args.clients, args.requests)
        rows.append((size, result))
        print(f"max_batch_size={size}: {json.dumps({k: round(v, 3) for k, v in result.items()})}", flush=True)
        serve.delete("bench")
    serve.shutdown()

    print(
        f"\n{info['family']} export {args.export} ({info['frames']} frames {w}x{h}), predict {args.future} frames, "
        f"{args.steps} steps, {args.clients} clients, {args.requests} requests, one replica (1 CPU)\n"
    )
    print("| batching | requests/s | p50 s | p95 s | p99 s | mean batch | errors |")
    print("|---|---|---|---|---|---|---|")
    for size, r in rows:
        label = f"on (max {size})" if size > 1 else "off"
        print(
            f"| {label} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['mean_batch']:.1f} "
            f"| {r['errors']} |"
        )
    print(
        f"\nmodel alone (1 thread): {ceiling[1]:.3f} s per clip at batch 1, {min(ceiling.values()):.3f} at best: "
        f"batching can gain at most x{ceiling[1] / min(ceiling.values()):.2f} here"
    )
    off = next((r for size, r in rows if size == 1), None)
    for size, on in rows:
        if off is not None and size > 1:
            gain = on["rps"] / off["rps"]
            print(f"max batch {size}: throughput x{gain:.2f}, p99 {on['p99']:.2f} s vs {off['p99']:.2f} s")


if __name__ == "__main__":
    main()
