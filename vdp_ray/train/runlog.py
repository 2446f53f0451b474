"""What a run tells people, written by rank 0 only: progress lines, TensorBoard, a JSONL of metrics, a text log,
and which node and device every rank ran on."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

from ..progress import format_duration
from .collectives import gather_objects


class RankZeroLog:
    """Progress lines, TensorBoard and a JSONL of metrics, written by rank 0 only (other ranks: no-ops)."""

    def __init__(self, run_dir: Path, stage: str, rank: int):
        self.enabled = rank == 0
        self.stage = stage
        self.run_dir = run_dir
        self.writer = None
        self.jsonl = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            (run_dir / "logs").mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(run_dir / "tb" / stage))
            self.jsonl = open(run_dir / "logs" / f"{stage}.jsonl", "a")  # noqa: SIM115 (closed in close())
            self.text = open(run_dir / "logs" / f"{stage}.log", "a")  # noqa: SIM115 (closed in close())

    def line(self, text: str) -> None:
        if self.enabled:
            # To the process' own stdout: Ray Train V2 re-routes plain print() through a logger that can
            # echo each line twice. Ray forwards it to the driver, whose terminal shows it by its tag (raylog.py).
            print(f"[vdp {self.stage}] {text}", file=sys.__stdout__, flush=True)
            self.text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.text.flush()

    def metrics(self, m: dict, total: int, eta: float | None) -> None:
        if not self.enabled:
            return
        parts = [
            f"step {m['step']}/{total}",
            f"loss {m['loss']:.4f}",
            f"lr {m['lr']:.2e}",
            f"{m['clips_per_s']:.1f} clips/s",
            f"data-wait {100 * m['data_wait']:.0f}%",
        ]
        if "latent_cache_hits" in m:
            parts.append(f"latent cache {100 * m['latent_cache_hits']:.0f}%")
        if "loss_scale" in m:
            parts.append(f"loss-scale {m['loss_scale']:.0f} (skipped {m['skipped_steps']})")
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        self.line(" | ".join(parts))
        self.scalars({f"train/{k}": v for k, v in m.items() if k not in ("step", "epoch")}, m["step"], echo=False)
        self.jsonl.write(json.dumps({"time": time.time(), **m}) + "\n")
        self.jsonl.flush()

    def scalars(self, values: dict, step: int, echo: bool = True) -> None:
        if self.enabled:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            if values and echo:
                self.line(" | ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.enabled:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def status(self, status: dict) -> None:
        """logs/<stage>-status.json: how the stage ended when it did not finish (the driver reads it)."""
        if self.enabled:
            (self.run_dir / "logs" / f"{self.stage}-{STATUS}").write_text(json.dumps(status))

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            self.text.close()
            self.enabled = False


STATUS = "status.json"


def record_placement(run_dir: Path, stage: str, rank: int, world: int, device, log: RankZeroLog) -> None:
    """Which node and device every rank runs on: one log line and logs/<stage>-workers.json (rank 0)."""
    import ray

    me = {
        "rank": rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "device": str(device),
    }
    everyone = gather_objects(me, world)
    if rank == 0:
        nodes = sorted({w["node_id"] for w in everyone})
        log.line(
            f"{world} worker(s) on {len(nodes)} node(s): "
            + ", ".join(f"rank {w['rank']} -> node {nodes.index(w['node_id'])} ({w['device']})" for w in everyone)
        )
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (run_dir / "logs" / f"{stage}-workers.json").write_text(json.dumps(everyone, indent=1))
