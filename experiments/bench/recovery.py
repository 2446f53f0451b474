"""Losing a node mid-run on a simulated two-node cluster (tests/support/cluster_sim.py): seconds from the node's
removal to the next training step, for a fixed worker group (waits for a replacement node, which joins 5 s
after the loss) and an elastic one (train.min_workers=1: goes on with one worker, grows back later).

    python experiments/bench/recovery.py [--shards DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", help="moving-digits shards (default: 32 clips made here)")
    args = ap.parse_args()
    from support.videos import digit_shards

    with tempfile.TemporaryDirectory(prefix="vdp-recovery-") as tmp:
        shards = args.shards or str(digit_shards(Path(tmp) / "digits", num_clips=32))
        env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
        rows = []
        for mode in ("fixed", "elastic"):
            run = Path(tmp) / mode
            sim = str(ROOT / "tests" / "support" / "cluster_sim.py")
            proc = subprocess.run(
                [sys.executable, sim, "--lose-node", mode, shards, str(run)],
                capture_output=True,
                text=True,
                env=env,
                timeout=1200,
            )
            if proc.returncode:
                sys.exit(f"{mode}: failed\n{(proc.stdout + proc.stderr)[-3000:]}")
            result = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])
            lines = (run / "logs" / "unet3d.log").read_text().splitlines()
            resumed = [x.split("resumed unet3d from step ")[1].split()[0] for x in lines if "resumed unet3d" in x]
            rows.append((mode, result, resumed))
            print(mode, json.dumps(result), "resumed from steps", resumed, flush=True)
    print("\n| worker group | node lost at step | resumed from step(s) | first step after the loss | seconds to it |")
    print("|---|---:|---|---:|---:|")
    for mode, r, resumed in rows:
        steps = ", ".join(resumed)
        print(f"| {mode} | {r['removed_at_step']} | {steps} | {r['first_step_after']} | {r['recovery_s']:.1f} |")


if __name__ == "__main__":
    main()
