"""The experiments built on scale_grid and the lr-equivalence measurement, end to end on a tiny
synthetic IDX dataset: files written, their content checked, bad flags as one line."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import report
from experiments import keras_faq, lr_equivalence, preprocess_compare
from scalelab import grid
from scalelab.losses import get_loss
from scalelab.models import make_model
from scalelab.optim import OptimizerConfig, make_direction
from scalelab.train import Hypers
from scalelab.transforms import fit_affine, parse_transform
from tests.conftest import write_idx_folder

NUM_TRAIN, NUM_TEST = 256, 64
# Sub-runs without curvature, saved params or reports: those have tests of their own.
FAST = ["--no-progress", "--no-curvature", "--no-save-params"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_folder(tmp_path_factory.mktemp("idx"), num_train=NUM_TRAIN, num_test=NUM_TEST)


def data_flags(folder) -> list[str]:
    return ["--data", "idx", "--data-dir", str(folder)]


def run_main(module, argv, capsys):
    code = module.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- lr_equivalence ------------------------------------------------------------------------------

LR_STEPS = 25
LR_ARGS = ["--steps", LR_STEPS, "--seeds", 2, "--hidden", 16, "--batch-size", 16, "--scales", "255,0.255,1/255"]


def lr_run(folder, out, *extra):
    """Runs lr_equivalence in-process; returns (summary, entries by (optimizer, variant, c), stdout)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = lr_equivalence.main([str(a) for a in [*data_flags(folder), *LR_ARGS, "--out", out, *extra]])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    entries = {(e["optimizer"], e["variant"], e["c_label"]): e for e in summary["entries"]}
    return summary, entries, stdout.getvalue()


@pytest.fixture(scope="module")
def lr_float32(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lr") / "f32"
    return (out, *lr_run(data_dir, out))


def test_lr_equivalence_sgd_exact_reparametrisation_coincides_in_float32(lr_float32):
    _, summary, entries, _ = lr_float32
    assert summary["dtype"] == "float32"
    for c in ("255", "0.255", "1/255"):
        sgd = entries[("sgd", "exact", c)]
        assert sgd["max_rel_param_diff"] < summary["tolerance"] and sgd["within_tolerance"]
        assert sgd["nonfinite_steps"] == 0


def test_lr_equivalence_adam_eps_over_c_is_exact_and_same_eps_is_not(lr_float32):
    _, _, entries, _ = lr_float32
    for c in ("255", "0.255", "1/255"):
        exact, same = entries[("adam", "exact", c)], entries[("adam", "same-eps", c)]
        # One step from the same weights: rounding only for eps/c, a visible gap for the same eps.
        assert exact["rel_param_diff_at_step"]["1"] < 1e-5
        assert same["rel_param_diff_at_step"]["1"] > 10 * exact["rel_param_diff_at_step"]["1"]
        assert same["max_rel_param_diff"] is not None and 0 <= same["eps_sensitive_frac_final"] <= 1
        np.testing.assert_allclose(exact["b_eps"], 1e-7 / exact["c"], rtol=1e-12)
        assert same["b_eps"] == 1e-7 and exact["b_first_kernel_lr_factor"] == pytest.approx(exact["c"])
    # Tiny inputs make eps dominate: more first-layer weights are eps-sensitive at c = 1/255.
    sensitive = {c: entries[("adam", "same-eps", c)]["eps_sensitive_frac_final"] for c in ("255", "1/255")}
    assert sensitive["1/255"] > sensitive["255"]


def test_lr_equivalence_writes_one_trajectory_row_per_step(lr_float32):
    out, summary, _, stdout = lr_float32
    rows = read_csv(out / "trajectories.csv")
    assert list(rows[0]) == list(lr_equivalence.TRAJECTORY_COLUMNS)
    assert len(rows) == 3 * 3 * 2 * LR_STEPS  # variants x scales x seeds x steps
    assert {(r["optimizer"], r["variant"]) for r in rows} == {("sgd", "exact"), ("adam", "exact"), ("adam", "same-eps")}
    # The summary's maximum is the maximum of the written trajectory.
    sgd_255 = [float(r["rel_param_diff"]) for r in rows if r["optimizer"] == "sgd" and float(r["c"]) == 255.0]
    entry = next(e for e in summary["entries"] if e["optimizer"] == "sgd" and e["c_label"] == "255")
    assert max(sgd_255) == pytest.approx(entry["max_rel_param_diff"], rel=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["scales"] == ["255", "0.255", "1/255"] and config["scale_values"] == [255.0, 0.255, 1 / 255]
    assert config["dtype"] == "float32" and config["steps"] == LR_STEPS and config["hidden"] == [16]
    assert "same-eps" in stdout and "step 1" in stdout


def test_lr_equivalence_x64_shows_the_sgd_gap_is_rounding(data_dir, tmp_path):
    # SGD only: each optimiser is a compile of its own, and the float32 tests cover Adam.
    summary, entries, _ = lr_run(data_dir, tmp_path / "f64", "--x64", "--steps", 10, "--variants", "sgd-exact")
    assert summary["dtype"] == "float64" and {e["optimizer"] for e in summary["entries"]} == {"sgd"}
    for c in ("255", "0.255", "1/255"):
        assert entries[("sgd", "exact", c)]["max_rel_param_diff"] < 1e-9
    assert not jax.config.jax_enable_x64  # the run does not leave float64 on for its caller


def test_lr_equivalence_refuses_an_existing_run(lr_float32, data_dir, capsys):
    out = lr_float32[0]
    before = (out / "summary.json").read_bytes()
    code, _, err = run_main(lr_equivalence, [*data_flags(data_dir), "--out", out], capsys)
    assert code == 2 and "already holds" in err and err.count("\n") == 1
    assert (out / "summary.json").read_bytes() == before


def test_parse_scale_accepts_fractions():
    assert lr_equivalence.parse_scale("1/255") == 1 / 255
    assert lr_equivalence.parse_scale(" 0.255 ") == 0.255


def test_lr_equivalence_flags_are_the_config_fields_over_the_chosen_preset():
    parser = lr_equivalence.build_parser()
    fields = {f.name for f in dataclasses.fields(lr_equivalence.Config)}
    assert {a.dest for a in parser._actions} == fields | {"help", "out", "quick", "debug"}
    config = lr_equivalence.config_from_args
    assert config(parser.parse_args([])) == lr_equivalence.DEFAULT
    assert config(parser.parse_args(["--quick"])) == lr_equivalence.QUICK
    quick = config(parser.parse_args(["--quick", "--steps", "7", "--scales", "2,1/2", "--x64", "--hidden", "8,8"]))
    assert quick == dataclasses.replace(lr_equivalence.QUICK, steps=7, scales=("2", "1/2"), x64=True, hidden=(8, 8))
    assert quick.scale_values == (2.0, 0.5) and quick.dtype == "float64"


def test_lr_equivalence_b_direction_scales_and_re_eps_only_the_first_kernel():
    params = {"params": {"Dense_0": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.ones(2)},
                         "Dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}  # fmt: skip
    grads = jax.tree.map(lambda p: 1e-4 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape), params)
    adam = OptimizerConfig(name="adam", eps=1e-3)
    direction = lr_equivalence.b_direction(adam, 7.0, 1e-5)
    updates, state = direction.update(grads, direction.init(params), params)
    plain, plain_state = make_direction(adam).update(grads, make_direction(adam).init(params), params)
    first, _ = make_direction(dataclasses.replace(adam, eps=1e-5)).update(
        grads, make_direction(adam).init(params), params
    )
    expected = lr_equivalence.first_kernel_map(lambda f, _: 7.0 * f, lambda _, p: p, first, plain)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), updates, expected)
    jax.tree.map(np.testing.assert_array_equal, state, plain_state)  # epsilon does not enter the state


def test_lr_equivalence_model_a_trains_as_scale_grid_does(tiny_dataset):
    """A's first epoch (seed keys, init, minibatch order with a padded last batch, loss, Adam step)
    is scale_grid's model on the transform c * base: its mean training loss is the grid's."""
    steps, batch_size, seeds = 13, 16, 2  # 200 examples: 12 full batches and one of 8
    config = lr_equivalence.Config(scales=("0.255",), variants=("adam-exact",), steps=steps, seeds=seeds,
                                   batch_size=batch_size, hidden=(16,))  # fmt: skip
    (arrays,) = lr_equivalence.measure(config, tiny_dataset).values()
    real = np.minimum(batch_size, 200 - batch_size * np.arange(steps))
    mean_loss_a = (arrays["loss_a"][0] * real).sum(axis=1) / 200

    x, y = tiny_dataset.train_images.reshape(200, -1), tiny_dataset.train_labels
    model = make_model((16,), 10, "relu", "glorot-uniform")
    program = grid.Program(model, get_loss("ce"), make_direction(OptimizerConfig(eps=1e-7)), batch_size, patience=0)
    init_keys, order_keys = grid.seed_keys(np.arange(seeds))
    base = fit_affine(parse_transform("/255"), x)
    hypers = Hypers(shift=base.shift[None], scale=(np.float32(0.255) * base.scale)[None], lr=np.float32([1e-3]))
    states = grid.init_grid(program, init_keys, 1, x.shape[1])
    _, metrics = grid.train_epoch(
        program, states, hypers, grid.DeviceData(*map(jnp.asarray, (x, y, x[:50], y[:50]))), order_keys, 0
    )
    np.testing.assert_allclose(mean_loss_a, np.asarray(metrics.train_loss)[:, 0], rtol=1e-5)


# --- keras_faq -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faq_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faq") / "run"
    reports = []
    argv = ["--quick", *data_flags(data_dir), "--train-limit", NUM_TRAIN, "--test-limit", NUM_TEST, *FAST]
    with pytest.MonkeyPatch.context() as mp:  # the report has tests of its own: here, only that it is asked for
        mp.setattr(report, "write_report", lambda run_dir: reports.append(Path(run_dir)))
        code = keras_faq.main([str(a) for a in [*argv, "--out", out]])
    assert code == 0
    return out, reports


def test_keras_faq_is_one_study_of_both_bundles_on_both_inputs(faq_run):
    out, _ = faq_run
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden"] == [128, 128] and config["grid"]["inputs"] == ["/1", "/255"]
    assert config["data"]["train_limit"] == NUM_TRAIN and config["grid"]["seeds"] == 2
    expected = {  # (activation, optimizer, loss, patience, epochs under --quick)
        ("relu", "adam", "keras-ce", "3", "4"),
        ("sigmoid", "sgd", "mse", "0", "6"),
    }
    rows = read_csv(out / "metrics.csv")
    assert {(r["activation"], r["optimizer"], r["loss_name"], r["patience"], r["epochs"]) for r in rows} == expected
    assert {r["inputs"] for r in rows} == {"/1", "/255"}
    for activation, *_, epochs in expected:  # each bundle trains for its own epochs
        assert max(int(r["epoch"]) for r in rows if r["activation"] == activation) <= int(epochs)


def test_keras_faq_comparison_of_accuracy_and_epochs(faq_run):
    out, _ = faq_run
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {(r["setting"], r["inputs"]): r for r in comparison["by_setting_and_inputs"]}
    assert set(rows) == {(s, i) for s in keras_faq.SETTINGS for i in ("/1", "/255")}
    metrics = read_csv(out / "metrics.csv")
    for (setting, inputs), row in rows.items():
        mine = [m for m in metrics if keras_faq.setting_of(m) == setting and m["inputs"] == inputs]
        accs = []
        for seed in {m["seed"] for m in mine}:
            history = sorted((m for m in mine if m["seed"] == seed), key=lambda m: int(m["epoch"]))
            ended = [m for m in history if m["stopped"] == "1" or m["diverged"] == "1"]
            accs.append(float((ended or history[-1:])[0]["test_acc"]))
        assert row["test_acc"]["mean"] == pytest.approx(np.mean(accs))
        assert row["epochs_trained"]["max"] <= keras_faq.SETTINGS[setting].quick_epochs
        assert row["models"] == 2


def test_keras_faq_writes_one_report_over_both_bundles(faq_run):
    out, reports = faq_run
    assert reports == [out]


def test_keras_faq_refuses_an_existing_output(faq_run, capsys):
    out, _ = faq_run
    code, _, err = run_main(keras_faq, ["--quick", "--out", out], capsys)
    assert code == 2 and "already holds" in err and err.count("\n") == 1


# --- preprocess_compare --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preprocess_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    argv = ["--quick", *data_flags(data_dir), "--train-limit", NUM_TRAIN, "--test-limit", NUM_TEST,
            "--hidden", 16, *FAST, "--no-report", "--out", out]  # fmt: skip
    assert preprocess_compare.main([str(a) for a in argv]) == 0
    return out


def test_preprocess_compare_has_every_transform_for_both_optimizers(preprocess_run):
    comparison = json.loads((preprocess_run / "comparison.json").read_text())
    pairs = {(r["optimizer"], r["inputs"]) for r in comparison["rows"]}
    assert pairs == {(o, t) for o in ("adam", "sgd") for t in ("/255", "[-1,1]", "zscore", "pixel-zscore", "robust")}
    config = json.loads((preprocess_run / "config.json").read_text())
    assert [p["optimizer.name"] for p in config["grid"]["programs"]] == ["adam", "sgd"]
    assert config["model"]["hidden"] == [16] and not (preprocess_run / "report.md").exists()  # --no-report
    assert {(r["optimizer"], r["lr"]) for r in read_csv(preprocess_run / "metrics.csv")} == {
        ("adam", "0.001"), ("sgd", "0.01")}  # fmt: skip


def test_preprocess_compare_differences_are_paired_by_seed(preprocess_run):
    comparison = json.loads((preprocess_run / "comparison.json").read_text())
    metrics = read_csv(preprocess_run / "metrics.csv")
    last = max(int(m["epoch"]) for m in metrics)
    for row in comparison["rows"]:
        acc = {(m["seed"], m["inputs"]): float(m["test_acc"]) for m in metrics
               if int(m["epoch"]) == last and m["optimizer"] == row["optimizer"]}  # fmt: skip
        gaps = [acc[(s, row["inputs"])] - acc[(s, "/255")] for s in ("0", "1")]
        assert row["test_acc_minus_baseline"]["mean"] == pytest.approx(np.mean(gaps), abs=1e-12)
        assert row["paired_seeds"] == 2
        if row["inputs"] == "/255":
            assert row["test_acc_minus_baseline"] == {"mean": 0.0, "min": 0.0, "max": 0.0}


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module,flags",
    [
        (lr_equivalence, ("--scales", "--base", "--steps", "--variants", "--x64", "--quick", "--out")),
        (keras_faq, ("--seeds", "--quick", "--train-limit", "--max-models-per-chunk", "--no-report", "--out")),
        (preprocess_compare, ("--seeds", "--quick", "--epochs", "--hidden", "--no-curvature", "--out")),
    ],
)
def test_help_lists_the_flags(module, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in flags)


@pytest.mark.parametrize(
    "module,argv,needle",
    [
        (lr_equivalence, ["--scales", "0"], "--scales"),
        (lr_equivalence, ["--scales", "1/0"], "--scales"),
        (lr_equivalence, ["--scales", "255,255"], "twice"),
        (lr_equivalence, ["--base", "/zero"], "input transform"),
        (lr_equivalence, ["--loss", "hinge"], "loss"),
        (lr_equivalence, ["--train-limit", 100000], "--train-limit"),
        (lr_equivalence, ["--steps", 0], "--steps"),
        (lr_equivalence, ["--variants", "sgd-exact,lion"], "--variants"),
        (keras_faq, ["--seeds", "two"], "--seeds"),
        (keras_faq, ["--bogus-flag"], "unrecognized"),
        (keras_faq, ["--train-limit", 100000], "--train-limit"),  # refused before anything is trained
        (preprocess_compare, ["--hidden", "16,0"], "--hidden"),
        (preprocess_compare, ["--activation", "swish"], "activation"),
    ],
)
def test_bad_flags_exit_2_with_one_line(module, argv, needle, data_dir, tmp_path, capsys):
    code, _, err = run_main(module, [*data_flags(data_dir), *argv, "--out", tmp_path / "r"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
