"""`make gpu-check`: the whole GPU path on a machine with one CUDA GPU, in about ten minutes.

    python experiments/bench/gpu_check.py [--steps 300] [--out runs/gpu-check]
    python experiments/bench/gpu_check.py --cpu-smoke     # the same sequence, tiny, on a CPU (checks the script)

1. moving-digits shards; 2. the U-Net in fp16 with ZeRO-2, rank 0 killed once mid-run and resumed (the loss
must fall, every step must be done once after the resume point); 3. the VAE -> DiT pipeline in bf16 with
ZeRO-2, then `vdp encode` with that VAE (the encoder on a GPU actor) and the DiT trained from the latent
shards; 4. the Predictor in fp32, fp16 and bf16 on both exports (finite, and the half-precision samples close
to the fp32 ones); 5. `vdp evaluate` with a GPU actor; 6. one `vdp serve` request answered on the GPU;
7. training throughput of DiT-B/2 at 1024 latent tokens (eager and torch.compile'd) and of the seed U-Net
through the DeepSpeed engine (bf16, ZeRO-2, one rank): clips/s, peak GPU memory, achieved TFLOP/s and MFU
against the GPU's dense bf16 peak.

Prints one line per check and a Markdown table for experiments/bench/RESULTS.md; exits 1 if any check failed.
Without CUDA it says so in one line and exits 2 (unless --cpu-smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
# dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch.cuda.get_device_name()
PEAKS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
}


class Checks:
    def __init__(self):
        self.results: list[tuple[str, bool, str]] = []
        self.numbers: list[dict] = []

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            note = fn(*args, **kwargs)
            ok = True
        except Exception as exc:  # every check runs; the summary says which failed and why
            note, ok = f"{type(exc).__name__}: {exc}", False
            traceback.print_exc()
        line = f"[{'ok' if ok else 'FAIL'}] {name} ({time.perf_counter() - start:.0f} s)" + (
            f": {note}" if note else ""
        )
        print(line, flush=True)
        self.results.append((name, ok, note or ""))
        return ok


def logged(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / "logs" / f"{stage}.jsonl").read_text().splitlines()]


def falls(rows: list[dict]) -> str:
    losses = [r["loss"] for r in rows]
    k = max(1, len(losses) // 10)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    assert all(np.isfinite(losses)), "a non-finite loss was logged"
    assert last < first, f"the loss did not fall: {first:.4f} -> {last:.4f}"
    waits = [r["data_wait"] for r in rows[1:]] or [0.0]
    return (
        f"loss {first:.4f} -> {last:.4f}, {rows[-1]['clips_per_s']:.0f} clips/s, data wait {100 * np.mean(waits):.1f}%"
    )


def config(name: str, run: Path, shards: Path, *overrides: str):
    from vdp_ray.config import load_config

    return load_config(
        ROOT / "experiments" / f"{name}.yaml",
        [
            f"run.dir={run}",
            f"run.name={run.name}",
            f"data.train={shards / 'train'}",
            f"data.val={shards / 'val'}",
            *overrides,
        ],
    )


def train_unet(a, shards: Path, work: Path) -> str:
    from vdp_ray.train import fit
    from vdp_ray.train.faults import Drill

    run = work / "unet-fp16"
    kill = a.steps // 2 + 3
    fit(
        config(
            "demo",
            run,
            shards,
            f"train.max_steps={a.steps}",
            "train.precision=fp16",
            "train.zero_stage=2",
            f"train.workers={a.workers}",
            f"train.checkpoint_every={a.steps // 2}",
            "train.max_failures=1",
            "train.log_every=5",
            *a.device_overrides,
        ),
        drill=Drill("kill", kill),
    )
    rows = logged(run, "unet3d")
    steps = [r["step"] for r in rows]
    assert steps[-1] == a.steps and set(steps) == set(range(5, a.steps + 1, 5)), "steps lost or not done"
    assert "resumed unet3d from step" in (run / "logs" / "unet3d.log").read_text(), "no resume after the kill"
    a.exports["unet"] = run / "export"
    return f"killed at step {kill}, resumed; " + falls(rows)


def train_latent(a, shards: Path, work: Path) -> str:
    from vdp_ray.train import fit

    run = work / "dit-bf16"
    fit(
        config(
            "tiny_dit",
            run,
            shards,
            f"train.max_steps={a.steps}",
            f"vae.max_steps={a.steps // 2}",
            "train.precision=bf16",
            "train.zero_stage=2",
            f"train.workers={a.workers}",
            "train.log_every=5",
            "train.lr=1e-3",
            "vae.lr=2e-3",
            *a.device_overrides,
        )
    )
    a.exports["dit"] = run / "export"
    a.vae = run / "vae_export"
    return f"vae: {falls(logged(run, 'vae'))}; dit: {falls(logged(run, 'dit'))}"


def train_from_latents(a, shards: Path, work: Path) -> str:
    """`vdp encode` with the run's VAE (the encoder on the GPU actor pool), then the DiT from the latent shards."""
    from vdp_ray.data.latent_shards import EncodeOptions, encode_latents
    from vdp_ray.train import fit

    summary = encode_latents(
        EncodeOptions(shards=str(shards), vae=str(a.vae), out=str(work / "latents")), log=lambda *_: None
    )
    if not a.cpu_smoke:
        assert summary["device"] == "cuda", summary
    run = work / "dit-latents"
    fit(
        config(
            "tiny_dit",
            run,
            shards,
            f"data.train={work / 'latents' / 'train'}",
            f"vae.export={a.vae}",
            "train.stages=[dit]",
            f"train.max_steps={a.steps}",
            "train.precision=bf16",
            "train.zero_stage=2",
            f"train.workers={a.workers}",
            "train.log_every=5",
            "train.lr=1e-3",
            *a.device_overrides,
        )
    )
    encoded = summary["splits"]["train"]
    where = f"encoded {encoded['clips']} clips on {summary['device']} in {encoded['seconds']:.1f} s"
    return f"{where}; {falls(logged(run, 'dit'))}"


def predict_every_precision(a) -> str:
    from vdp_ray.metrics import psnr
    from vdp_ray.pixels import clips_to_model
    from vdp_ray.predict import Predictor

    notes = []
    clip = (np.random.default_rng(0).random((4, 32, 32, 1)) * 255).astype(np.uint8)
    for name, export in a.exports.items():
        outs = {}
        for precision in ("fp32", "fp16", "bf16"):
            p = Predictor.from_export(export, device=a.device, precision=precision)
            out = p.predict(clip, 4, steps=10, seed=0, sampler="ddim")
            assert out.shape[0] == 4 and np.isfinite(out.astype(np.float32)).all(), f"{name} {precision}"
            outs[precision] = clips_to_model(out[None])
        close = {k: psnr(outs[k], outs["fp32"]).mean().item() for k in ("fp16", "bf16")}
        assert min(close.values()) > 20, f"{name}: half-precision samples far from fp32: {close}"
        notes.append(f"{name}: fp16 {close['fp16']:.1f} dB, bf16 {close['bf16']:.1f} dB from fp32")
    return "; ".join(notes)


def evaluate_on_gpu(a, shards: Path, work: Path) -> str:
    from vdp_ray.evaluate import EvalOptions, evaluate

    m = evaluate(
        EvalOptions(
            checkpoint=str(a.exports["unet"]),
            shards=str(shards / "val"),
            context=4,
            future=4,
            clips=32,
            steps=10,
            out=str(work / "eval"),
        )
    )
    pr = m["protocol"]
    if not a.cpu_smoke:
        assert pr["device"] == "cuda" and pr["gpus_per_actor"] == 1.0, pr
    return f"actor on {pr['device']} ({pr['gpus_per_actor']:g} GPU), PSNR {m['psnr']:.2f} (gain {m['psnr_gain']:+.2f})"


def serve_one_request(a) -> str:
    import httpx

    port = 18000 + os.getpid() % 1000
    cmd = [sys.executable, "-m", "vdp_ray.cli", "serve", "--checkpoint", str(a.exports["dit"]), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, "vdp serve did not come up"
            time.sleep(1)
        info = httpx.get(url + "/v1/model", timeout=30).json()
        if not a.cpu_smoke:
            assert info["device"].startswith("cuda"), info
        r = httpx.post(url + "/v1/generate", data={"steps": "4", "format": "npz", "seed": "0"}, timeout=120)
        assert r.status_code == 200, (r.status_code, r.text[:300])
        return f"replica on {info['device']} in {info['precision']}, one request: {len(r.content)} bytes"
    finally:
        server.send_signal(2)  # SIGINT: Serve and Ray stop cleanly
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def throughput(a, checks: Checks) -> str:
    """One rank, in this process: the DeepSpeed engine as the loop builds it, bf16, ZeRO-2, synthetic latents."""
    import deepspeed
    import torch.distributed as dist

    from vdp_ray.config import load_config
    from vdp_ray.diffusion import make_diffusion
    from vdp_ray.models import build_denoiser, forward_flops
    from vdp_ray.train.engine import build_engine, configure_device

    if not dist.is_initialized():
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(29500 + os.getpid() % 1000),
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
        )
        dist.init_process_group("nccl" if a.device == "cuda" else "gloo", rank=0, world_size=1)
    device = torch.device(a.device)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    peak = float(os.environ.get("VDP_GPU_PEAK_TFLOPS", peak or 0)) or None
    # the seed geometries: DiT-B/2 on the seed VAE's latents of 16 frames at 256^2 (4 x 32 x 32: 1024 tokens),
    # and the seed U-Net on 16 RGB frames at 64^2
    dit, latents = ["model.preset=B"], (4, 4, 32, 32)
    cases = [
        ("DiT-B/2, 1024 latent tokens", "seed_dit", dit, latents, 16),
        ("DiT-B/2, 1024 tokens, compiled", "seed_dit", [*dit, "train.compile=true"], latents, 16),
        ("U-Net seed, 16 x 64^2", "seed_unet", [], (3, 16, 64, 64), 8),
    ]
    if a.cpu_smoke:
        cases = [("DiT-tiny (smoke)", "tiny_dit", ["model.preset=tiny"], (4, 4, 8, 8), 2)]
    lines = []
    for label, experiment, overrides, shape, batch in cases:
        cfg = load_config(
            ROOT / "experiments" / f"{experiment}.yaml",
            [*overrides, "train.zero_stage=2", "train.precision=bf16", f"train.batch_size={batch}"],
        )
        torch.manual_seed(0)
        stage = type("BenchStage", (), {})()
        stage.model, stage.device = build_denoiser(cfg), device
        flops = 3 * forward_flops(stage.model, torch.zeros(1, *shape), torch.zeros(1, shape[1]), None) * batch
        configure_device(device, cfg.train)  # TF32 and cuDNN's autotuner, as a training worker sets them
        engine, _ = build_engine(stage, cfg, "bench", 1, "bf16", deepspeed.initialize)
        diffusion = make_diffusion(cfg.diffusion)
        x0 = torch.randn(batch, *shape, device=device)
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(a.bench_steps + 3):
            if a.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = diffusion.training_losses(engine, x0, None, dtype=torch.bfloat16)["loss"]
            engine.backward(loss)
            engine.step()
            if a.device == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        step = float(np.median(times))
        tflops = flops / step / 1e12
        memory = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else float("nan")
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        checks.numbers.append(
            {
                "model": label,
                "params_M": sum(p.numel() for p in stage.model.parameters()) / 1e6,
                "clips_per_s": batch / step,
                "peak_GiB": memory,
                "TFLOP/s": tflops,
                "MFU": mfu,
            }
        )
        lines.append(f"{label}: {batch / step:.1f} clips/s, {tflops:.1f} TFLOP/s, MFU {mfu}, peak {memory:.1f} GiB")
        del engine
        if a.device == "cuda":
            torch.cuda.empty_cache()
    return f"{name}: " + "; ".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per stage")
    parser.add_argument("--bench-steps", type=int, default=20, help="timed steps per model in the throughput check")
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the sequence tiny on CPUs (checks the script)")
    a = parser.parse_args()
    if not torch.cuda.is_available() and not a.cpu_smoke:
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing was checked")
        return 2
    a.device = "cpu" if a.cpu_smoke else "cuda"
    a.workers = 1 if a.cpu_smoke or torch.cuda.device_count() < 2 else 2
    a.device_overrides = ["train.use_gpu=false", "train.cpus_per_worker=1"] if a.cpu_smoke else ["train.use_gpu=true"]
    if a.cpu_smoke:
        a.steps, a.bench_steps = min(a.steps, 20), min(a.bench_steps, 3)
    a.exports = {}
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="vdp-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    from vdp_ray.data.shards import ShardOptions, shard
    from vdp_ray.raytools import init_ray

    init_ray(num_cpus=os.cpu_count())
    checks = Checks()
    shards = work / "shards"
    clips = 64 if a.cpu_smoke else 512
    split = {"train": 0.875, "val": 0.125}
    options = ShardOptions(
        out=str(shards), synthetic="moving-digits", num_clips=clips, frames=8, size=(32, 32), split=split
    )
    checks.run("shards", lambda: shard(options, log=lambda *_: None) and None)
    checks.run("U-Net fp16 ZeRO-2, killed and resumed", train_unet, a, shards, work)
    checks.run("VAE -> DiT bf16 ZeRO-2", train_latent, a, shards, work)
    if "dit" in a.exports:
        checks.run("vdp encode, then the DiT from latent shards", train_from_latents, a, shards, work)
    if a.exports:
        checks.run("Predictor in fp32 / fp16 / bf16", predict_every_precision, a)
    if "unet" in a.exports:
        checks.run("vdp evaluate with a GPU actor", evaluate_on_gpu, a, shards, work)
    if "dit" in a.exports:
        checks.run("vdp serve: one request on the GPU", serve_one_request, a)
    checks.run("throughput and MFU (bf16, ZeRO-2, one rank)", throughput, a, checks)
    if torch.cuda.is_available():
        print(f"\n# {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("\n| model | params | clips/s | TFLOP/s | MFU | peak GPU memory |\n|---|---|---|---|---|---|")
    for n in checks.numbers:
        print(
            f"| {n['model']} | {n['params_M']:.1f}M | {n['clips_per_s']:.1f} | {n['TFLOP/s']:.1f} | {n['MFU']} | "
            f"{n['peak_GiB']:.1f} GiB |"
        )
    failed = [name for name, ok, _ in checks.results if not ok]
    print(
        f"\ngpu-check: {len(checks.results) - len(failed)}/{len(checks.results)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
