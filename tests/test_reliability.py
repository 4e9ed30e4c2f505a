"""Run directories under stress: wrong paths, foreign schemas, failed writes, Ctrl-C, two writers."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import scale_grid
from scalelab import results
from scalelab.errors import ScalelabError

from .conftest import write_idx_folder
from .test_resume import FLAGS, ROOT, _checkpoint_epoch, _cli

SHORT = [*FLAGS[:3], "2", *FLAGS[4:]]  # two epochs


def run_cli(argv, capsys):
    code = scale_grid.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_resume_of_a_folder_that_is_not_a_run_directory_is_refused(tmp_path, capsys):
    code, err = run_cli(["--resume", tmp_path], capsys)
    assert code == 1 and "not a scalelab run directory" in err and err.count("\n") == 1


def test_resume_of_a_missing_folder_is_refused(tmp_path, capsys):
    code, err = run_cli(["--resume", tmp_path / "nope"], capsys)
    assert code == 1 and "not a directory" in err


def test_a_run_directory_of_another_schema_version_is_refused(idx_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli([*SHORT, "--data-dir", idx_folder, "--out", run], capsys)[0] == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "schema_version": 99}))
    code, err = run_cli(["--resume", run], capsys)
    assert code == 1 and "schema version 99" in err


def test_resume_and_a_different_out_conflict(idx_folder, tmp_path, capsys):
    code, err = run_cli(["--resume", tmp_path / "a", "--out", tmp_path / "b"], capsys)
    assert code == 2 and "--resume" in err


def test_an_unwritable_output_location_is_a_one_line_error(idx_folder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_cli([*SHORT, "--data-dir", idx_folder, "--out", blocker / "run"], capsys)
    assert code == 1 and "cannot create" in err and err.count("\n") == 1


def test_a_failed_write_keeps_the_previous_file_whole_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    results.atomic_write_text(target, "old,complete\n")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.os, "fsync", disk_full)
    with pytest.raises(ScalelabError, match="No space left on device"):
        results.atomic_write_text(target, "new,half")
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_disk_full_mid_run_exits_1_and_keeps_the_last_complete_epoch(idx_folder, tmp_path, monkeypatch, capsys):
    real_fsync, checkpoints = os.fsync, []

    def fsync_failing_late(fd):
        # Everything up to and including epoch 1's checkpoint succeeds; the disk is full after it.
        if checkpoints:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if "checkpoint" in os.readlink(f"/proc/self/fd/{fd}"):
            checkpoints.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(results.os, "fsync", fsync_failing_late)
    run = tmp_path / "run"
    code, err = run_cli([*SHORT, "--data-dir", idx_folder, "--out", run], capsys)
    error_lines = [line for line in err.splitlines() if "error" in line]
    assert code == 1 and len(error_lines) == 1
    assert "No space left" in error_lines[0] and "--resume" in error_lines[0] and "Traceback" not in err
    rows = results.RunDir(run).metrics()
    assert {r["epoch"] for r in rows} == {1} and len(rows) == 6
    monkeypatch.setattr(results.os, "fsync", real_fsync)
    code, _ = run_cli(["--resume", run, "--no-progress"], capsys)
    assert code == 0 and {r["epoch"] for r in results.RunDir(run).metrics()} == {1, 2}


def test_ctrl_c_stops_at_an_epoch_boundary_saves_and_says_how_to_resume(tmp_path):
    data = write_idx_folder(tmp_path / "idx", num_train=3000, num_test=200)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(*FLAGS, "--data-dir", data, "--out", run), cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while (_checkpoint_epoch(run) or 0) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"--resume {run}" in err and "Traceback" not in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted"
    rows = results.RunDir(run).metrics()
    assert max(r["epoch"] for r in rows) == _checkpoint_epoch(run) < 6


def test_checkpoint_every_n_epochs_and_always_after_the_last(tiny_dataset, tmp_path):
    from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, RunConfig, TrainConfig
    from scalelab.runner import run_grid

    config = RunConfig(
        data=DataConfig(name="synthetic"), model=ModelConfig(hidden=(8,)), train=TrainConfig(epochs=3, batch_size=32),
        grid=GridConfig(inputs=("/255",), seeds=1), curvature=CurvatureConfig(enabled=False),
    )  # fmt: skip
    run = results.RunDir.create(tmp_path / "run", config)
    seen = []

    def on_epoch(chunk, epoch, rows):
        loaded = run.load_checkpoint()
        seen.append(None if loaded is None else (loaded[1]["chunk"], loaded[1]["epoch"]))

    run_grid(config, tiny_dataset, run, checkpoint_every=2, on_epoch=on_epoch)
    assert seen == [None, (0, 2), (1, 0)]


def test_a_second_writer_is_refused_naming_the_holder_and_changes_nothing(idx_folder, tmp_path, capsys):
    """A re-queued job resuming a run that another process is still training (held: a lock in a child)."""
    run = tmp_path / "run"
    assert run_cli([*SHORT, "--data-dir", idx_folder, "--out", run], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from scalelab.locking import RunLock\n"
         "with RunLock(sys.argv[1]) as lock:\n    lock.announce(); print('held', flush=True); time.sleep(60)",
         str(run)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, err = run_cli(["--resume", run, "--epochs", 3, "--no-progress"], capsys)
    finally:
        holder.kill()
        holder.wait()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(errors) == 1 and f"PID {holder.pid}" in errors[0] and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_a_lock_left_by_a_dead_process_is_taken_over(idx_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli([*SHORT, "--data-dir", idx_folder, "--out", run], capsys)[0] == 0
    # A holder killed with SIGKILL leaves its lock file behind; the kernel has dropped its flock.
    code = "import os, sys; from scalelab.locking import RunLock\n"
    code += "RunLock(sys.argv[1]).__enter__().announce(); os.kill(os.getpid(), 9)"
    subprocess.run([sys.executable, "-c", code, str(run)], cwd=ROOT)
    assert json.loads((run / ".lock").read_text())["pid"] > 0
    code, _ = run_cli(["--resume", run, "--epochs", 3, "--no-progress"], capsys)
    assert code == 0 and json.loads((run / ".lock").read_text())["pid"] == os.getpid()
