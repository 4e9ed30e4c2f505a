"""Interruption and resume: a run killed with SIGKILL resumes to bit-identical metrics."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import scale_grid

from .conftest import write_idx_folder

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--data", "idx", "--epochs", "6", "--seeds", "2", "--hidden", "16", "--batch-size", "8",
         "--inputs", "/1,/255,zscore", "--no-progress", "--no-report",
         "--curvature-examples", "32", "--lanczos-steps", "4", "--trace-probes", "2"]  # fmt: skip


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "experiments.scale_grid", *map(str, argv)]


@pytest.fixture
def slow_idx(tmp_path):
    # Large enough that an epoch takes a visible moment, so the kill lands mid-run.
    return write_idx_folder(tmp_path / "idx", num_train=3000, num_test=200)


def _checkpoint_position(run: Path) -> tuple[int, int] | None:
    """(next chunk, next epoch) of the newest checkpoint; chunks run program by program."""
    try:
        with np.load(run / "checkpoint.npz") as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            return meta["chunk"], meta["epoch"]
    except Exception:  # not written yet, or being replaced right now
        return None


def _checkpoint_epoch(run: Path) -> int | None:
    position = _checkpoint_position(run)
    return None if position is None else position[1]


# One program killed after its second epoch; two programs (relu, tanh) killed inside the second.
KILLS = {"one-program": ([], (0, 2)), "two-programs": (["--activation", "relu,tanh", "--epochs", "4"], (1, 1))}


@pytest.mark.parametrize("kill", KILLS, ids=list(KILLS))
def test_sigkill_then_resume_gives_bit_identical_metrics(slow_idx, tmp_path, kill):
    extra, position = KILLS[kill]
    flags = [*FLAGS, *extra, "--data-dir", slow_idx]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(*flags, "--out", reference), check=True, cwd=ROOT, env=env)

    proc = subprocess.Popen(_cli(*flags, "--out", killed), cwd=ROOT, env=env)
    deadline = time.time() + 120
    while (_checkpoint_position(killed) or (0, 0)) < position and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "status.json").read_text())["state"] == "running", "the run ended before the kill"
    assert _checkpoint_position(killed) >= position

    subprocess.run(_cli("--resume", killed, "--no-progress"), check=True, cwd=ROOT, env=env)
    assert (killed / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert (killed / "curvature.csv").read_bytes() == (reference / "curvature.csv").read_bytes()
    assert json.loads((killed / "status.json").read_text())["state"] == "complete"


def test_resume_with_a_different_config_is_refused_naming_the_fields(idx_folder, tmp_path, capsys):
    run = tmp_path / "run"
    flags = [*FLAGS[:3], "2", *FLAGS[4:], "--data-dir", str(idx_folder)]
    assert scale_grid.main([*flags, "--out", str(run)]) == 0
    capsys.readouterr()
    code = scale_grid.main(["--resume", str(run), "--epochs", "3", "--lr", "0.01", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "train.epochs" in err and "grid.lrs" in err and err.count("\n") == 1


def short_run(idx_folder, out, *extra) -> list[str]:
    flags = [*FLAGS[:3], "2", *FLAGS[4:], "--data-dir", str(idx_folder), *map(str, extra)]
    assert scale_grid.main([*flags, "--out", str(out)]) == 0
    return flags


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_bit_identically(idx_folder, tmp_path, capsys):
    run = tmp_path / "run"
    short_run(idx_folder, run)
    before = {name: (run / name).read_bytes() for name in ("metrics.csv", "curvature.csv")}
    assert (run / "checkpoint.prev.npz").exists()
    (run / "checkpoint.npz").write_bytes(b"PK\x03\x04 half a zip")
    capsys.readouterr()
    assert scale_grid.main(["--resume", str(run), "--no-progress"]) == 0  # redoes the last epoch
    err = capsys.readouterr().err
    assert "checkpoint.npz is damaged" in err and "resuming from checkpoint.prev.npz" in err
    assert {name: (run / name).read_bytes() for name in before} == before


def test_two_damaged_checkpoints_are_one_runtime_error(idx_folder, tmp_path, capsys):
    run = tmp_path / "run"
    short_run(idx_folder, run)
    for name in ("checkpoint.npz", "checkpoint.prev.npz"):
        (run / name).write_bytes(b"PK\x03\x04 half a zip")
    capsys.readouterr()
    assert scale_grid.main(["--resume", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert all(f"{name} is damaged" in errors[0] for name in ("checkpoint.npz", "checkpoint.prev.npz"))


@pytest.mark.parametrize("chunk", [3])  # two chunks: each trains on from its own final state
def test_resume_with_more_epochs_trains_on_bit_identically(idx_folder, tmp_path, capsys, chunk):
    extra = ["--max-models-per-chunk", chunk, "--batch-size", 32]
    flags = short_run(idx_folder, tmp_path / "extended", *extra)  # 2 epochs
    longer = [*flags[:3], "4", *flags[4:]]
    assert scale_grid.main([*longer, "--out", str(tmp_path / "straight")]) == 0
    assert scale_grid.main(["--resume", str(tmp_path / "extended"), "--epochs", "4", "--no-progress"]) == 0
    for name in ("metrics.csv", "curvature.csv"):
        assert (tmp_path / "extended" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    config = json.loads((tmp_path / "extended" / "config.json").read_text())
    assert config["train"]["epochs"] == 4 and [h["epochs"] for h in config["history"]] == [2]
    assert json.loads((tmp_path / "extended" / "status.json").read_text())["epochs"] == 4


def test_resume_with_fewer_epochs_is_refused(idx_folder, tmp_path, capsys):
    run = tmp_path / "run"
    short_run(idx_folder, run)
    capsys.readouterr()
    assert scale_grid.main(["--resume", str(run), "--epochs", "1", "--no-progress"]) == 2
    assert "--epochs may only grow" in capsys.readouterr().err
