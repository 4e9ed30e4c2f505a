"""The main job end to end, in-process: files written, flags checked, errors as one line."""

import csv
import json
from pathlib import Path

import pytest

from experiments import scale_grid

REAL_DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
TINY = ["--data", "idx", "--epochs", "2", "--seeds", "2", "--hidden", "16", "--batch-size", "16",
        "--inputs", "/1,/255,[-1,1]", "--no-progress", "--no-curvature", "--no-report"]  # fmt: skip


def run_cli(argv, capsys):
    code = scale_grid.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_config_metrics_and_summary(idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli([*TINY, "--data-dir", idx_folder, "--out", out], capsys)
    assert code == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    required = "seed,inputs,epoch,train_loss,train_acc,test_loss,test_acc,grad_norm,stopped,diverged".split(",")
    assert set(required) <= set(rows[0])
    assert len(rows) == 2 * 3 * 2  # seeds x inputs x epochs
    assert {r["inputs"] for r in rows} == {"/1", "/255", "[-1,1]"}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["models"]) == 6 and len(summary["groups"]) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["grid"]["inputs"] == ["/1", "/255", "[-1,1]"] and config["train"]["epochs"] == 2
    assert "[-1,1]" in stdout and "test loss" in stdout


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--inputs", "/0"], "divisor"),
        (["--inputs", "/255,scale"], "unknown input transform"),
        (["--epochs", "-1"], "--epochs"),
        (["--seeds", "two"], "--seeds"),
        (["--lr", "1e-3,abc"], "--lr"),
        (["--hidden", "128,0"], "--hidden"),
        (["--activation", "swish"], "activation"),
        (["--optimizer", "lion"], "optimizer"),
        (["--loss", "hinge"], "loss"),
        (["--bogus-flag"], "unrecognized"),
        (["--batch-size", "100000"], "--batch-size"),
        (["--train-limit", "99999999"], "--train-limit"),
        (["--patience", "-1"], "--patience"),
        (["--epochs", "3.5"], "--epochs"),
        (["--init", "orthogonal"], "initialiser"),
        (["--curvature-every", "-5"], "--curvature-every"),
        (["--curvature-examples", "0"], "--curvature-examples"),
        (["--trace-probes", "1"], "--trace-probes"),
        (["--top-k", "5", "--lanczos-steps", "3"], "--top-k"),
        (["--resume", "elsewhere"], "--resume"),
    ],
)
def test_bad_flags_exit_2_with_one_line_naming_the_problem(argv, needle, idx_folder, tmp_path, capsys):
    code, _, err = run_cli([*TINY, "--data-dir", idx_folder, "--out", tmp_path / "r", *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for a command that was wrong


def test_missing_data_dir_is_a_runtime_error_naming_the_folder(tmp_path, capsys):
    code, _, err = run_cli([*TINY, "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "r"], capsys)
    assert code == 1 and "nowhere" in err and err.count("\n") == 1


def test_an_existing_run_is_never_overwritten(idx_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--data-dir", idx_folder, "--out", out], capsys)[0] == 0
    before = (out / "metrics.csv").read_bytes()
    code, _, err = run_cli([*TINY, "--data-dir", idx_folder, "--out", out], capsys)
    assert code == 1 and "--resume" in err
    assert (out / "metrics.csv").read_bytes() == before


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        scale_grid.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--inputs", "--seeds", "--epochs", "--batch-size", "--hidden", "--activation", "--loss",
                 "--optimizer", "--lr", "--patience", "--train-limit", "--data", "--data-dir", "--out",
                 "--quick", "--resume"):  # fmt: skip
        assert flag in text


@pytest.mark.skipif(not REAL_DATA.exists(), reason="Fashion-MNIST is not installed")
def test_quick_run_on_real_fashion_mnist(tmp_path, capsys):
    code, stdout, _ = run_cli(["--quick", "--no-progress", "--no-report", "--out", tmp_path / "q"], capsys)
    assert code == 0
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    by = {g["inputs"]: g for g in summary["groups"]}
    # Even 2048 examples x 2 epochs separate /255 from raw pixels.
    assert by["/255"]["test_acc"]["mean"] > 0.6
    assert by["/1"]["test_loss"]["mean"] > 3 * by["/255"]["test_loss"]["mean"]
