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


def config_of(*argv):
    args = scale_grid.build_parser().parse_args([str(a) for a in argv])
    return scale_grid.config_from_args(args, *scale_grid.base_and_quick(args))


def test_the_default_is_the_posts_study_of_arms():
    config = config_of()
    programs = [dict(p) for p in config.grid.programs]
    assert len(programs) == 7 and config.grid.seeds == 8 and config.train.epochs == 2
    base, *arms = programs
    assert base["grid.inputs"] == ("/1", "/255", "/1000", "zscore", "[-1,1]")
    assert all(a["grid.inputs"] == ("/1", "/255") for a in arms)
    changed = [{k: v for k, v in a.items() if scale_grid.POSTS_NETWORK.get(k, v) != v} for a in arms]
    assert changed == [{"train.loss": "ce"}, {"model.activation": "sigmoid"}, {"optimizer.name": "sgd"},
                       {"model.activation": "sigmoid", "optimizer.name": "sgd", "train.loss": "mse"},
                       {"model.hidden": (32,)}, {"model.hidden": (512,)}]  # fmt: skip
    assert arms[-1]["grid.seeds"] == scale_grid.WIDE_SEEDS and config.num_models == 8 * 5 + 5 * 8 * 2 + 3 * 2
    assert [c.lrs for _, c in config.programs()][3:5] == [(1e-2,), (1e-2,)]  # SGD arms at SGD's own default lr


def test_quick_is_the_same_study_on_a_slice_and_seeds_or_epochs_keep_it():
    quick = config_of("--quick")
    assert len(quick.grid.programs) == 7 and quick.data.train_limit == 2048 and quick.train.epochs == 1
    assert not quick.curvature.enabled and config_of().curvature.enabled
    assert config_of("--seeds", 4, "--epochs", 3).grid.programs and config_of("--seeds", 4).grid.seeds == 4


def test_a_flag_that_describes_another_study_starts_from_the_single_network_defaults(tmp_path):
    assert config_of("--hidden", 16).grid.programs == () and config_of("--inputs", "/1,/255").grid.programs == ()
    assert config_of("--quick", "--lr", "1e-2").data.train_limit == 2048  # QUICK, the single network's preset
    (tmp_path / "c.toml").write_text("[train]\nepochs = 1\n")
    assert config_of("--config", tmp_path / "c.toml").grid.programs == ()


@pytest.mark.skipif(not REAL_DATA.exists(), reason="Fashion-MNIST is not installed")
def test_quick_run_on_real_fashion_mnist(tmp_path, capsys):
    flags = ["--quick", "--no-progress", "--no-report", "--hidden", "128", "--epochs", "2", "--out", tmp_path / "q"]
    code, stdout, _ = run_cli(flags, capsys)
    assert code == 0
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    by = {g["inputs"]: g for g in summary["groups"]}
    # Even 2048 examples x 2 epochs separate /255 from raw pixels.
    assert by["/255"]["test_acc"]["mean"] > 0.6
    assert by["/1"]["test_loss"]["mean"] > 3 * by["/255"]["test_loss"]["mean"]
