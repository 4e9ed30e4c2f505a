"""analysis.heatmaps on synthetic run directories: cells, boundary, equal-trajectory line, facets."""

import math

import numpy as np
import pytest

from analysis import heatmaps, plots
from scalelab.schema import Axis
from tests.rundir_factory import Outcome, RunSpec, config_json, metrics_rows, spec_axes, write_run

RAW = Outcome(train_loss_1=13.0, final_loss=12.9, final_acc=0.2)
GOOD = Outcome(train_loss_1=0.5, final_loss=0.35, final_acc=0.87)
# Raw pixels learn only at the smallest lr; every other /1 cell is stuck at 12.9.
SGD_SPEC = dict(
    outcomes={"/1": RAW, "/255": GOOD, "/1000": GOOD, "zscore": GOOD},
    lrs=(1e-4, 1e-3, 1e-2),
    optimizer="sgd",
    cells={(("inputs", "/1"), ("lr", 1e-4)): Outcome(final_loss=0.5, final_acc=0.8)},
)


def panels_of(tmp_path, **spec):
    run = plots.load_run(write_run(tmp_path / "run", RunSpec(**spec)))
    return heatmaps.heatmap_panels(run.metrics, run.axes, run.config)


def test_chance_loss_is_the_uniform_predictions_loss():
    assert heatmaps.chance_loss("keras-ce") == pytest.approx(math.log(10))
    # mse: (0.9**2 + 9 * 0.1**2) / 10, the mean over classes of (1/10 - onehot)**2.
    assert heatmaps.chance_loss("mse") == pytest.approx(0.09)


def test_a_cell_is_the_median_over_seeds_and_centred_inputs_are_left_out(tmp_path):
    (panel,) = panels_of(tmp_path, **SGD_SPEC)[("inputs", "lr")]
    assert panel.xs == ("/1", "/255", "/1000") and panel.ys == (1e-4, 1e-3, 1e-2)
    # Seeds 0 and 1 measure x and 1.1 x (median 1.05 x); the j-th lr multiplies by 1 + j.
    np.testing.assert_allclose(panel.loss[:, 1], [0.35 * 1.05 * k for k in (1, 2, 3)], rtol=1e-12)
    np.testing.assert_allclose(panel.loss[:, 0], [0.5 * 1.05, 12.9 * 1.05 * 2, 12.9 * 1.05 * 3], rtol=1e-12)
    assert (panel.models == 2).all()


def test_trainable_is_below_the_uniform_loss_and_flips_with_the_outcome(tmp_path):
    (panel,) = panels_of(tmp_path / "a", **SGD_SPEC)[("inputs", "lr")]
    np.testing.assert_array_equal(panel.trainable[:, 0], [True, False, False])
    assert panel.trainable[:, 1:].all()
    flipped = dict(SGD_SPEC, cells={})
    (panel,) = panels_of(tmp_path / "b", **flipped)[("inputs", "lr")]
    assert not panel.trainable[:, 0].any()


def test_the_sgd_line_is_lr_proportional_to_c_squared_through_the_best_cell(tmp_path):
    (panel,) = panels_of(tmp_path, **SGD_SPEC)[("inputs", "lr")]
    assert panel.best() == (0, 1)  # /255 at lr 1e-4: 0.3675
    label, cs, lrs = heatmaps.predicted_line(panel)
    assert "lr ∝ C²" in label
    np.testing.assert_allclose(lrs, 1e-4 * (cs / 255.0) ** 2, rtol=1e-12)
    assert cs[0] == pytest.approx(1.0) and cs[-1] == pytest.approx(1000.0)


def test_no_lr_line_for_adam(tmp_path):
    (panel,) = panels_of(tmp_path, **dict(SGD_SPEC, optimizer="adam"))[("inputs", "lr")]
    assert heatmaps.predicted_line(panel) is None


def test_an_init_scale_axis_gives_its_own_heatmap_with_the_s_proportional_to_c_line(tmp_path):
    panels = panels_of(tmp_path, outcomes={"/1": RAW, "/255": GOOD}, init_scales=(0.5, 2.0))
    assert set(panels) == {("inputs", "init_scale")}  # one lr: no lr heatmap
    (panel,) = panels[("inputs", "init_scale")]
    label, cs, scales = heatmaps.predicted_line(panel)
    assert "s ∝ C" in label
    np.testing.assert_allclose(scales, 0.5 * cs / 255.0, rtol=1e-12)


def test_every_setting_of_another_axis_is_its_own_facet(tmp_path):
    spec = RunSpec(**dict(SGD_SPEC, extra_axes=(Axis("activation", ("tanh", "relu"), str),)))
    panels = heatmaps.heatmap_panels(metrics_rows(spec), spec_axes(spec), config_json(spec))
    facets = panels[("inputs", "lr")]
    assert [p.facet_label for p in facets] == ["activation tanh", "activation relu"]
    # relu, the axis' second value, doubles every number (rundir_factory.setting_factor).
    np.testing.assert_allclose(facets[1].loss, 2 * facets[0].loss, rtol=1e-12)


def test_a_cell_whose_models_all_diverged_is_undefined_and_marked(tmp_path):
    run = plots.load_run(write_run(tmp_path / "run", RunSpec(**SGD_SPEC)))
    for row in run.metrics:
        if row["inputs"] == "/1000" and row["lr"] == 1e-2:
            row["diverged"] = True
    (panel,) = heatmaps.heatmap_panels(run.metrics, run.axes, run.config)[("inputs", "lr")]
    assert math.isnan(panel.loss[2, 2]) and panel.models[2, 2] == 0 and not panel.trainable[2, 2]
    fig = heatmaps.plot_heatmap([panel])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "n/a\n(diverged)" in texts and sum("✗" in t for t in texts) == 2
    assert any(ln.get_label().startswith("SGD: lr ∝ C²") for ln in fig.axes[0].get_lines())


def test_plots_and_report_include_the_heatmap(tmp_path):
    run = plots.load_run(write_run(tmp_path / "run", RunSpec(**SGD_SPEC)))
    figures = plots.build_figures(run)
    assert "heatmap_inputs_lr" in figures
    from analysis import report

    text = report.render_markdown(report.compute_findings(run), figure_names=figures)
    assert "## Final test loss over input transform × lr" in text
    assert "![" in text and "(figures/heatmap_inputs_lr.png)" in text
    assert "7 of 9 cells are trainable" in text
    assert "lr 0.0001: trainable at /1, /255, /1000" in text and "lr 0.01: trainable at /255, /1000; not at /1" in text
