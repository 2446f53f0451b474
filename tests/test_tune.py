"""`vdp tune` for real: a sweep of four tiny trials (each a Ray Train + DeepSpeed run) with ASHA early stopping
and every output (results.csv / results.md, best.yaml accepted by `vdp train --dry-run`, the best export, the
plot), in-process on the session's Ray; and, as the CLI on a Ray of its own, an interruption with SIGINT and
a resume that runs only the missing trials."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vdp_ray.cli import main
from vdp_ray.export import Export
from vdp_ray.fsutil import run_lock
from vdp_ray.tune import SweepError, TrialRow, load_sweep, pick_best, results_table, shares_vae, sweep

ROOT = Path(__file__).resolve().parents[1]
GOOD_LR, BAD_LR = 2e-3, 1e-7  # a learning rate that learns in 10 steps, and one that cannot
TRIAL = {
    "max_steps": 10,
    "val_every": 5,
    "preview_every": 10,
    "checkpoint_every": 5,
    "log_every": 5,
    "warmup_steps": 2,
    "workers": 1,
    "batch_size": 4,
    "val_batches": 1,
}


def sweep_file(tmp_path: Path, digits: Path, **changes) -> Path:
    spec = {
        "base": str(ROOT / "experiments" / "tiny_unet.yaml"),
        "name": "t",
        "dir": str(tmp_path / "sweep"),
        "metric": "val/loss",
        # grid order: the last key varies fastest, so both good-lr trials run (and set the rungs) first
        "space": {"train.lr": {"choice": [GOOD_LR, BAD_LR]}, "diffusion.schedule": {"choice": ["cosine", "linear"]}},
        "overrides": {
            "data.train": str(digits / "train"),
            "data.val": str(digits / "val"),
            **{f"train.{k}": v for k, v in TRIAL.items()},
            "sampling.steps": 4,
            # without an anchor an untrained model is far from the data, so a learning rate that cannot learn
            # scores worse than one that does; with one, both start at copy-last and ten steps need not
            # separate them (on CI the bad rate's trials outscored the good ones)
            "diffusion.anchor": "none",
        },
        "scheduler": {"asha": {"grace_period": 5, "reduction_factor": 2}},
        "max_concurrent_trials": 2,
        **changes,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def vdp(*args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "vdp_ray.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def trial_logs(folder: Path) -> dict[str, str]:
    return {p.parts[-3]: p.read_text() for p in sorted(folder.glob("trials/*/logs/unet3d.jsonl"))}


def by_lr(rows: list[dict]) -> dict[float, list[dict]]:
    out: dict[float, list[dict]] = {GOOD_LR: [], BAD_LR: []}
    for r in rows:
        out[float(r["train.lr"])].append(r)
    return out


def check_asha(rows: list[dict]) -> list[dict]:
    """The good learning rate runs to the end; ASHA stops the bad one at the first rung, at step 5 of 10. The
    two good trials race each other: the one reaching the rung second is cut there too when the other's record
    is better (ASHA keeps the top half), so at least one of them, not necessarily both, runs to the end.
    Returns the good trials that finished."""
    lrs = by_lr(rows)
    done_good = [r for r in lrs[GOOD_LR] if r["status"] == "done"]
    assert done_good and all(int(r["steps"]) == 10 for r in done_good), rows
    assert all(r["status"] == "done" or int(r["steps"]) == 5 for r in lrs[GOOD_LR]), rows
    stopped = [r for r in lrs[BAD_LR] if r["status"] == "stopped early"]
    assert stopped and all(int(r["steps"]) == 5 for r in stopped), rows
    assert all(float(r["val/loss"]) > max(float(g["val/loss"]) for g in lrs[GOOD_LR]) for r in lrs[BAD_LR])
    return done_good


@pytest.mark.train
def test_sweep_early_stops_and_writes_a_winner(digits, tmp_path):
    """Two trials one after the other (the good learning rate first, so it sets ASHA's rung): the bad one is
    stopped at the rung. The CLI test below runs the full grid, two at a time."""
    path = sweep_file(tmp_path, digits, space={"train.lr": {"choice": [GOOD_LR, BAD_LR]}}, max_concurrent_trials=1)
    out = tmp_path / "sweep"
    result = sweep(load_sweep(path), progress=False)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 and len({r["run_dir"] for r in rows}) == 2
    assert {r.trial for r in result.rows} == {r["trial"] for r in rows}
    done_good = check_asha(rows)

    # the winner: best.yaml (the base config with the winning values) trains as is; its export is copied
    best_row = min(done_good, key=lambda r: float(r["val/loss"]))
    assert result.best is not None and result.best.trial == best_row["trial"]
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["lr"] == GOOD_LR and best["train"]["max_steps"] == 300  # the base's budget, not the trial's
    assert main(["train", str(out / "best.yaml"), "--dry-run"]) == 0
    export = Export(out / "best_export")
    assert export.meta["steps"] == 10 and export.cfg.train.lr == GOOD_LR
    assert "**best**" in (out / "results.md").read_text() and best_row["trial"] in (out / "results.md").read_text()
    assert (out / "metric.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every trial ran under its own Ray Train run name (a repeated name would silently resume another)
    assert len({p.name for p in out.glob("trials/*/ray/*")}) == 2

    # a finished sweep re-run trains nothing new; a changed sweep in the same folder is refused
    before = trial_logs(out)
    again = sweep(load_sweep(path), progress=False)
    assert trial_logs(out) == before and again.best.trial == result.best.trial
    with pytest.raises(SweepError, match="holds a different sweep"):
        sweep(load_sweep(path, ["train.max_steps=12"]), progress=False)


def test_a_sweep_never_takes_over_a_folder_that_is_not_its_own(digits, tmp_path):
    """dir= pointing at a folder of other files is refused, with --restart too (nothing is removed); a sweep
    folder another `vdp tune` holds is refused. Both before any Ray work."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("mine")
    path = sweep_file(tmp_path, digits, dir=str(home))
    for restart in (False, True):
        with pytest.raises(SweepError, match="not a sweep folder: refusing to replace"):
            sweep(load_sweep(path), restart=restart, progress=False)
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
    with run_lock(tmp_path / "sweep", "vdp tune"), pytest.raises(SweepError, match="in use by vdp tune"):
        sweep(load_sweep(sweep_file(tmp_path, digits)), restart=True, progress=False)


@pytest.mark.cluster
def test_an_interrupted_sweep_resumes_only_its_missing_trials(digits, tmp_path):
    """`vdp tune` as a user runs it (its own Ray): Ctrl-C once two trials have ended, then the same command."""
    path = sweep_file(tmp_path, digits)
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    proc = vdp("tune", str(path), env=env)
    lines, ended = [], 0
    deadline = time.time() + 600
    while ended < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        ended += line.startswith("[vdp tune]") and (" finished: " in line or " stopped early at step " in line)
    assert ended == 2, "".join(lines[-40:])
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)
    first = "".join(lines) + rest
    assert proc.returncode == 130, first[-3000:]
    assert "run the same command to resume" in first
    before = trial_logs(out)
    assert len(before) >= 2

    # the same command resumes: finished trials are not run again, the missing ones are
    proc = vdp("tune", str(path), env=env)
    second, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, second[-3000:]
    assert "resuming the sweep" in second
    after = trial_logs(out)
    assert len(after) == 4
    for trial, text in before.items():
        steps = [json.loads(x)["step"] for x in text.splitlines()]
        if steps and steps[-1] == 10:  # finished before the interruption (a just-started trial has no steps yet)
            assert after[trial] == text, f"{trial} ran again after the resume"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and len({r["run_dir"] for r in rows}) == 4
    best_row = min(check_asha(rows), key=lambda r: float(r["val/loss"]))  # ASHA's records survived the interruption
    assert yaml.safe_load((out / "best.yaml").read_text())["diffusion"]["schedule"] == best_row["diffusion.schedule"]
    assert Export(out / "best_export").cfg.diffusion.schedule == best_row["diffusion.schedule"]


def test_dry_run_lists_the_trials(digits, tmp_path, capsys):
    path = sweep_file(tmp_path, digits)
    assert main(["tune", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 trial(s)" in text and "each trial: 10 steps of unet3d" in text and "train.lr" in text
    assert not (tmp_path / "sweep").exists()


def test_a_bad_sweep_fails_before_any_ray_work(digits, tmp_path, capsys):
    path = sweep_file(tmp_path, digits, space={"train.lrr": {"choice": [1e-3]}})
    assert main(["tune", str(path)]) == 2
    assert "train.lrr" in capsys.readouterr().err
    path = sweep_file(tmp_path, digits, scheduler={"asha": {"grace_period": 50}})
    assert main(["tune", str(path)]) == 2
    assert "grace_period" in capsys.readouterr().err
    path = sweep_file(tmp_path, digits, overrides={"data.train": str(tmp_path / "nothing")})
    assert main(["tune", str(path)]) == 2
    assert "data.train" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def row(trial, value, status="done", steps=10):
    return TrialRow(
        trial=trial,
        params={"train.lr": 0.1},
        status=status,
        steps=steps,
        value=value,
        best=value,
        wall_s=1.0,
        run_dir=f"/x/{trial}",
    )


def test_the_winner_comes_from_trials_that_ran_to_the_end():
    rows = [row("a", 0.5), row("b", 0.2, "stopped early", 5), row("c", 0.4), row("d", None, "error", 0)]
    assert pick_best(rows, "min").trial == "c"  # b's lower loss is from half the steps
    assert pick_best(rows, "max").trial == "a"
    assert pick_best([rows[1], rows[3]], "min").trial == "b"  # no finished trial: the best scored one
    assert pick_best([rows[3]], "min") is None
    table = results_table(rows, "val/loss", rows[2])
    assert table.count("\n") == len(rows) + 1 and "c **best**" in table and "stopped early" in table


def test_a_latent_sweep_shares_its_vae_unless_a_trial_changes_it(tmp_path, digits):
    data = {"data.train": str(digits / "train"), "data.val": str(digits / "val")}
    lr = {"train.lr": {"choice": [1e-3, 2e-3]}}
    for space, fixed, shared in (
        ({"diffusion.schedule": {"choice": ["linear", "cosine"]}}, {}, True),
        (lr, {}, False),  # the VAE stage trains with train.lr too...
        (lr, {"vae.lr": 1e-3}, True),  # ...unless it has its own
        ({"train.batch_size": {"choice": [2, 4]}}, {}, False),
        ({"train.batch_size": {"choice": [2, 4]}}, {"vae.batch_size": 2}, True),
        ({"vae.kl_weight": {"choice": [1e-6, 1e-4]}}, {}, False),
        ({"data.context_frames": {"choice": [2, 4]}}, {}, False),
    ):
        path = tmp_path / "dit.yaml"
        spec = {"base": str(ROOT / "experiments" / "tiny_dit.yaml"), "metric": "val/loss", "space": space}
        path.write_text(yaml.safe_dump({**spec, "overrides": {**data, **fixed}}))
        sweep_spec = load_sweep(path)
        assert shares_vae(sweep_spec, sweep_spec.config_for({})) is shared, (space, fixed)
