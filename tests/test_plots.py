"""analysis.plots on synthetic run directories: what each figure draws, not only that it is written."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from analysis import plots
from scalelab.config import RunConfig
from scalelab.errors import ScalelabError
from scalelab.results import read_curvature
from scalelab.schema import Axis, grid_axes
from tests.rundir_factory import (
    MAX_STEP,
    Outcome,
    RunSpec,
    curvature_rows,
    epoch_loss,
    metrics_rows,
    spec_axes,
    spectrum,
    write_run,
)

OUTCOMES = {
    "/1": Outcome(train_loss_1=13.0, final_loss=12.9, final_acc=0.2, abs_logit=300.0, clipped=0.8),
    "/255": Outcome(),
    "/1000": Outcome(train_loss_1=0.6, final_loss=0.4, abs_logit=0.5, top_eig=4.0),
    "zscore": Outcome(final_loss=0.3, dead=0.02),
}


@pytest.fixture
def run(tmp_path):
    return plots.load_run(write_run(tmp_path / "run", RunSpec(dict(OUTCOMES))))


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def line(ax, label):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return found


def test_read_curvature_parses_ints_strings_and_nan(run):
    row = run.curvature[0]
    assert isinstance(row["model"], int) and isinstance(row["step"], int) and isinstance(row["seed"], int)
    assert row["inputs"] == "/1" and row["skipped"] == ""
    assert isinstance(row["epoch"], float) and math.isnan(row["adam_sharpness"])  # nan at step 0 by the schema


def test_a_skipped_row_with_every_number_nan_is_read_and_left_out(tmp_path):
    run_dir = write_run(tmp_path / "run", RunSpec({"/255": Outcome()}, seeds=1))
    path = run_dir / "curvature.csv"
    header = path.read_text().splitlines()[0].split(",")
    row = {c: "nan" for c in header} | {"inputs": "/255", "skipped": "diverged in epoch 1"}
    path.write_text(path.read_text() + ",".join(row[c] for c in header) + "\n")
    run = plots.load_run(run_dir)
    assert math.isnan(run.curvature[-1]["step"]) and run.curvature[-1]["skipped"]
    figures = plots.build_figures(run)
    top = line(figures["sharpness"].axes[0], "/255: top eigenvalue")
    assert np.all(np.isfinite(top.get_xdata())) and len(top.get_xdata()) == 7


def test_read_curvature_names_the_column_of_a_damaged_file(tmp_path):
    path = tmp_path / "curvature.csv"
    path.write_text("model,seed,inputs,lr,step,skipped,loss\n0,0,/1,0.001,0,,oops\n")
    with pytest.raises(ScalelabError, match="'loss'"):
        read_curvature(path, grid_axes(RunConfig()))


@pytest.mark.parametrize(("name", "divisor"), [("/1", 1.0), ("/1e3", 1000.0), ("zscore", None), ("[-1,1]", None)])
def test_divisor_of(name, divisor):
    assert plots.divisor_of(name) == divisor


def test_loss_curves_draw_the_median_over_seeds_per_transform_on_a_log_axis(run):
    fig = plots.plot_loss_curves(run.metrics, run.axes, "keras-ce")
    train, test = fig.axes
    assert legend_texts(train) == ["/1", "/255", "/1000", "zscore"]  # ordered by C, centred last
    assert train.get_yscale() == "log" and train.get_xlabel() == "epoch" and "nats" in train.get_ylabel()
    assert "Training" in train.get_title() and "Test" in test.get_title()
    # Seeds 0 and 1 measure x and 1.1 x: the median of two is 1.05 x, the band spans x..1.1 x.
    expected = [1.05 * epoch_loss(OUTCOMES["/1000"], e, 3) for e in (1, 2, 3)]
    np.testing.assert_allclose(line(train, "/1000").get_ydata(), expected, rtol=1e-12)
    assert sum(isinstance(c, PolyCollection) for c in train.collections) == 4


def test_final_vs_divisor_puts_divisors_on_a_log_x_axis_and_centred_inputs_as_lines(run):
    fig = plots.plot_final_vs_divisor(run.metrics, run.axes, "keras-ce")
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_xscale() == "log" and "divisor C" in loss_ax.get_xlabel()
    assert "accuracy" in acc_ax.get_ylabel() and "loss" in loss_ax.get_ylabel()
    (bars,) = [c for c in loss_ax.containers if isinstance(c, ErrorbarContainer)]
    x, y = bars.lines[0].get_data()
    np.testing.assert_array_equal(x, [1.0, 255.0, 1000.0])
    np.testing.assert_allclose(y, [12.9 * 1.05, 0.35 * 1.05, 0.4 * 1.05], rtol=1e-12)
    zscore = line(loss_ax, "zscore")
    np.testing.assert_allclose(zscore.get_ydata(), [0.3 * 1.05] * 2, rtol=1e-12)  # axhline: constant y


def test_init_diagnostics_use_step_0_with_log_axis_for_logits(run):
    fig = plots.plot_init_diagnostics(run.curvature, run.axes)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["mean_abs_logit", "mean_max_prob", "clipped_wrong_frac", "predicted_class_frac", "dead_frac_0"]
    logits, clipped = fig.axes[0], fig.axes[2]
    assert logits.get_yscale() == "log" and clipped.get_yscale() == "linear"
    assert logits.get_xscale() == "log"
    (bars,) = [c for c in clipped.containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(bars.lines[0].get_ydata(), [0.8 * 1.05, 0.0, 0.0], rtol=1e-12)
    assert "zscore" in [t.get_text() for t in fig.legends[0].get_texts()]  # one legend, below the panels


def test_sharpness_has_one_line_per_transform_and_both_thresholds(run):
    (ax,) = plots.plot_sharpness(run.curvature, run.axes).axes
    assert ax.get_yscale() == "symlog" and ax.get_xlabel().startswith("optimiser step")  # an eigenvalue of 0 shows
    assert "Adam's sharpness: undefined at step 0" in ax.get_xlabel()
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert sum(label.endswith("top eigenvalue") for label in labels) == 4
    assert sum(label.endswith("Adam preconditioned") for label in labels) == 4
    np.testing.assert_allclose(line(ax, "SGD threshold 2/lr = 2000").get_ydata(), [2000.0] * 2)
    np.testing.assert_allclose(line(ax, "Adam threshold 38/lr = 38000").get_ydata(), [38000.0] * 2)
    top = line(ax, "/1000: top eigenvalue")
    assert top.get_xdata()[0] == 0 and top.get_xdata()[-1] == MAX_STEP
    np.testing.assert_allclose(top.get_ydata()[0], 4.0 * 1.05, rtol=1e-12)
    adam = line(ax, "/1000: Adam preconditioned")
    assert adam.get_xdata()[0] > 0  # nan at step 0 is left out, not drawn


def test_skipped_and_non_finite_rows_are_left_out_of_medians(tmp_path):
    spec = RunSpec({"/255": Outcome()}, seeds=2, skipped_models={1})
    run = plots.load_run(write_run(tmp_path / "run", spec))
    run.metrics[-1]["train_loss"] = math.inf
    (ax,) = plots.plot_sharpness(run.curvature, run.axes).axes
    top = line(ax, "/255: top eigenvalue")
    # Model 1 (seed 1) is skipped after step 0, so later medians are seed 0's values alone.
    np.testing.assert_allclose(top.get_ydata()[0], 10.0 * 1.05, rtol=1e-12)
    np.testing.assert_allclose(top.get_ydata()[-1], 10.0 * 2.0, rtol=1e-12)
    train = plots.plot_loss_curves(run.metrics, run.axes).axes[0]
    assert np.all(np.isfinite(line(train, "/255").get_ydata()))
    assert line(train, "/255").get_ydata()[-1] == pytest.approx(0.35)  # the inf of seed 1 is dropped


def test_spectra_have_one_log_panel_per_transform_with_the_density_peak_at_the_spike(run):
    fig = plots.plot_spectra(run.spectrum, run.axes)
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["/1", "/255", "/1000", "zscore"]
    for ax in fig.axes:
        assert ax.get_yscale() == "log" and "eigenvalue" in ax.get_xlabel()
        (curve,) = ax.get_lines()
        x, y = curve.get_data()
        assert abs(x[np.nanargmax(y)]) < 0.1  # 0.8 and 0.5 of the probes' weight sit at ~0


def test_spectrum_models_keep_at_most_six_spread_over_the_scales():
    models = [{"model": i, "seed": 0, "lr": 1e-3, "inputs": f"/{10**i}", "nodes": [], "weights": []} for i in range(9)]
    chosen = [m["inputs"] for m in plots.spectrum_models({"models": models}, grid_axes(RunConfig()))]
    assert len(chosen) == plots.MAX_SPECTRA and chosen[0] == "/1" and chosen[-1] == "/100000000"


def test_grad_norms_have_an_epoch_panel_and_a_step_panel_only_with_curvature(run):
    fig = plots.plot_grad_norms(run.metrics, run.axes, run.curvature)
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "optimiser step"]
    assert all(ax.get_yscale() == "symlog" and len(ax.get_lines()) == 4 for ax in fig.axes)
    assert len(plots.plot_grad_norms(run.metrics, run.axes, None).axes) == 1


def test_missing_optional_files_skip_their_figures(tmp_path):
    spec = RunSpec({"/1": Outcome(), "/255": Outcome()}, curvature=False, spectrum=False)
    figures = plots.build_figures(plots.load_run(write_run(tmp_path / "run", spec)))
    assert set(figures) == {"loss_curves", "final_vs_divisor", "grad_norms"}


def test_main_writes_png_and_svg_and_prints_them(tmp_path, capsys):
    spec = RunSpec({"/1": Outcome(), "/255": Outcome()}, seeds=1, epochs=2, curvature=False)
    run_dir = write_run(tmp_path / "run", spec)
    assert plots.main([str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    names = {"loss_curves", "final_vs_divisor", "grad_norms", "spectral_density"}
    assert sorted(printed) == sorted(str(run_dir / "figures" / f"{n}.{e}") for n in names for e in ("png", "svg"))
    assert (run_dir / "figures" / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (run_dir / "figures" / "loss_curves.svg").read_bytes()[:500]


def test_a_directory_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert plots.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a scalelab run directory" in err
    assert plots.main([]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


def test_a_run_without_a_finished_epoch_is_a_one_line_error(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", RunSpec({"/255": Outcome()}))
    (run_dir / "metrics.csv").write_text((run_dir / "metrics.csv").read_text().splitlines()[0] + "\n")
    assert plots.main([str(run_dir)]) == 1
    assert "has no rows yet" in capsys.readouterr().err


# ---------------------------------------------------------------------------- series from the axes

ACTIVATION = Axis("activation", ("tanh", "relu"), str)  # a hypothetical axis, in an order that is not alphabetical
AXES = (Axis("seed", (0, 1), int), ACTIVATION, Axis("inputs", ("/255", "/1"), str), Axis("lr", (1e-2, 1e-3), float))


@pytest.mark.parametrize(
    ("keys", "label"),
    [
        ([("relu", "/1", 1e-3), ("relu", "/255", 1e-3)], "/255"),
        ([("relu", "/255", 1e-2), ("relu", "/255", 1e-3)], "lr 0.001"),
        ([("relu", "/1", 1e-2), ("relu", "/255", 1e-3)], "/255, lr 0.001"),
        ([("tanh", "/1", 1e-3), ("relu", "/255", 1e-3)], "relu, /255"),
        ([("relu", "/255", 1e-3)], "/255"),  # one setting: named by its transform
    ],
)
def test_a_label_names_the_axes_that_vary_among_the_series(keys, label):
    assert plots.Settings.of(AXES).label(("relu", "/255", 1e-3), keys) == label


def test_series_follow_each_axis_order_of_values_and_the_divisor_order_for_inputs():
    settings = plots.Settings.of(AXES)
    keys = [(a, i, lr) for a in ("relu", "tanh") for i in ("zscore", "/1000", "/1", "[-1,1]") for lr in (1e-3, 1e-2)]
    ordered = settings.ordered(keys)
    assert [k[0] for k in ordered[::8]] == ["tanh", "relu"]  # the axis' order, not the alphabet's
    assert [k[1] for k in ordered[:8:2]] == ["/1", "/1000", "[-1,1]", "zscore"]  # C, then centred by name
    assert [k[2] for k in ordered[:2]] == [1e-2, 1e-3]


def test_a_run_with_two_lrs_draws_one_series_per_setting(tmp_path):
    run = plots.load_run(write_run(tmp_path / "run", RunSpec(dict(OUTCOMES), lrs=(1e-3, 1e-2))))
    assert [a.name for a in run.axes] == ["seed", "inputs", "lr"]
    train = plots.plot_loss_curves(run.metrics, run.axes).axes[0]
    assert legend_texts(train) == [f"{i}, lr {lr}" for i in OUTCOMES for lr in ("0.001", "0.01")]
    # The second lr doubles every number (tests/rundir_factory.setting_factor).
    expected = [2 * 1.05 * epoch_loss(OUTCOMES["/1000"], e, 3) for e in (1, 2, 3)]
    np.testing.assert_allclose(line(train, "/1000, lr 0.01").get_ydata(), expected, rtol=1e-12)
    final = plots.plot_final_vs_divisor(run.metrics, run.axes)
    loss_ax = final.axes[0]
    bars = {c.get_label(): c.lines[0].get_ydata() for c in loss_ax.containers if isinstance(c, ErrorbarContainer)}
    assert list(bars) == ["x / C, lr 0.001", "x / C, lr 0.01"]
    np.testing.assert_allclose(bars["x / C, lr 0.01"], [2 * 12.9 * 1.05, 2 * 0.35 * 1.05, 2 * 0.4 * 1.05], rtol=1e-12)
    assert {"zscore, lr 0.001", "zscore, lr 0.01"} <= {t.get_text() for t in final.legends[0].get_texts()}
    (ax,) = plots.plot_sharpness(run.curvature, run.axes).axes
    assert sum(ln.get_label().endswith("top eigenvalue") for ln in ax.get_lines()) == 8
    np.testing.assert_allclose(line(ax, "SGD threshold 2/lr = 200").get_ydata(), [200.0] * 2)
    # The lr acts from the first step on: one spectrum per transform, not per (transform, lr).
    titles = [a.get_title() for a in plots.plot_spectra(run.spectrum, run.axes).axes]
    assert [t.split("\n(")[0] for t in titles] == list(OUTCOMES)


def test_an_extra_setting_axis_gives_one_series_per_setting_in_the_axes_order():
    spec = RunSpec(dict(OUTCOMES), extra_axes=(ACTIVATION,))
    axes, metrics, curvature = spec_axes(spec), metrics_rows(spec), curvature_rows(spec)
    # A static axis (activation) is a facet: one loss panel per value, one line per transform in each.
    tanh, relu = [a for a in plots.plot_loss_curves(metrics, axes).axes if a.get_visible()]
    assert tanh.get_title() == "activation tanh" and relu.get_title() == "activation relu"
    assert [ln.get_label() for ln in relu.get_lines() if not ln.get_label().startswith("_")] == list(OUTCOMES)
    expected = [2 * 1.05 * epoch_loss(OUTCOMES["/1000"], e, 3) for e in (1, 2, 3)]  # relu, the second value
    np.testing.assert_allclose(line(relu, "/1000").get_ydata(), expected, rtol=1e-12)
    loss_ax = plots.plot_final_vs_divisor(metrics, axes).axes[0]
    bars = [c for c in loss_ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in bars] == ["x / C, tanh", "x / C, relu"]
    np.testing.assert_array_equal(bars[1].lines[0].get_xdata(), [1.0, 255.0, 1000.0])
    np.testing.assert_allclose(line(loss_ax, "relu, zscore").get_ydata(), [2 * 0.3 * 1.05] * 2, rtol=1e-12)
    init = plots.plot_init_diagnostics(curvature, axes).axes[2]
    (tanh, relu) = [c for c in init.containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(relu.lines[0].get_ydata(), [2 * 0.8 * 1.05, 0.0, 0.0], rtol=1e-12)
    tanh, relu = [a for a in plots.plot_sharpness(curvature, axes).axes if a.get_visible()]  # one panel each
    assert tanh.get_title() == "activation tanh"
    assert line(tanh, "/1: top eigenvalue").get_ydata()[0] == pytest.approx(10.0 * 1.05)
    assert line(relu, "/1: top eigenvalue").get_ydata()[0] == pytest.approx(2 * 10.0 * 1.05)
    grads = plots.plot_grad_norms(metrics, axes, curvature)
    assert all(len(a.get_lines()) == 8 for a in grads.axes) and "(activation, inputs)" in grads.get_suptitle()
    panels = plots.plot_spectra(spectrum(spec), axes).axes  # 8 networks at init, at most 6 panels
    assert len(panels) == plots.MAX_SPECTRA and panels[0].get_title().startswith("tanh, /1\n(seed 0")


def spelt_axis_names(path: Path) -> list[tuple[str, str]]:
    """(name, its line) for every string constant in ``path`` that is the name of a grid axis."""
    source = path.read_text()
    lines, names = source.splitlines(), {a.name for a in grid_axes(RunConfig())}
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and n.value in names]
    return sorted((n.value, lines[n.lineno - 1].split("#")[0].strip()) for n in nodes)


def test_the_analysis_reads_a_row_only_through_the_axes():
    """No ``row["lr"]``, ``row["inputs"]`` or ``model["seed"]``: rows are read through the axes
    (``Settings.key``), and the two axes the figures are about are named once, as constants."""
    assert spelt_axis_names(Path(plots.__file__)) == [("inputs", 'INPUTS = "inputs"'), ("lr", 'LR = "lr"')]
    others = sorted(p for p in Path(plots.__file__).parent.glob("*.py") if p.name not in ("plots.py", "curvature.py"))
    assert {p.name for p in others} >= {"report.py", "questions.py", "arms.py", "answer_plots.py", "heatmaps.py"}
    for path in others:
        assert spelt_axis_names(path) == [], path.name
