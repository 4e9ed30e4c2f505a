"""analysis.report: the sentences follow the data. Two synthetic runs with opposite outcomes must give
opposite statements, and the numbers in the text must be the ones measured in the run."""

import math

import pytest

from analysis import plots, report
from scalelab.schema import Axis
from tests.rundir_factory import (
    Outcome,
    RunSpec,
    config_json,
    curvature_rows,
    metrics_rows,
    spec_axes,
    write_run,
)

# /1 saturates (80% clipped, one class) and /1000 is behind /255 at epoch 1 and at the end.
SATURATED = {
    "/1": Outcome(train_loss_1=13.0, final_loss=12.9, final_acc=0.2, abs_logit=300.0, clipped=0.8,
                  predicted_class=0.95, grad_norm_0=50.0, preact_std_0=250.0),
    "/255": Outcome(train_loss_1=0.5, final_loss=0.35, final_acc=0.87, dead=0.3),
    "/1000": Outcome(train_loss_1=0.7, final_loss=0.45, final_acc=0.84, grad_norm_0=0.25, preact_std_0=0.25),
    "zscore": Outcome(final_loss=0.3, dead=0.05),
}  # fmt: skip
# Nothing saturates, and /1000 is ahead of /255 throughout.
HEALTHY = {
    "/1": Outcome(train_loss_1=0.9, final_loss=0.6, final_acc=0.8, abs_logit=5.0, clipped=0.01),
    "/255": Outcome(train_loss_1=0.5, final_loss=0.35, dead=0.1),
    "/1000": Outcome(train_loss_1=0.4, final_loss=0.28, final_acc=0.9, top_eig=3000.0),
    "zscore": Outcome(final_loss=0.5, dead=0.2),
}


def findings_for(tmp_path, outcomes, **spec):
    return report.compute_findings(plots.load_run(write_run(tmp_path / "run", RunSpec(dict(outcomes), **spec))))


def text_for(tmp_path, outcomes, **spec):
    return report.render_markdown(findings_for(tmp_path, outcomes, **spec), figure_names=())


def test_findings_hold_the_final_mean_and_range_over_seeds(tmp_path):
    f = findings_for(tmp_path, SATURATED)
    final = f["finals"][("/1", 1e-3)]
    # Seeds 0 and 1 measure x and 1.1 x.
    assert final["test_loss"] == pytest.approx({"mean": 12.9 * 1.05, "min": 12.9, "max": 12.9 * 1.1, "n": 2})
    assert f["largest_pixels"] == ("/1", 1e-3) and f["ref"] == ("/255", 1e-3) and f["slow"] == ("/1000", 1e-3)
    assert f["init"][("/1", 1e-3)]["clipped_wrong_frac"] == pytest.approx(0.8 * 1.05)


def test_saturation_is_claimed_with_its_numbers_only_when_the_clipped_share_is_large(tmp_path):
    saturated = text_for(tmp_path / "a", SATURATED)
    healthy = text_for(tmp_path / "b", HEALTHY)
    assert "The softmax is saturated at /1" in saturated and "84% at step 0" in saturated  # 0.8 * 1.05
    assert "95% of the examples the same class (at /255: 20%)" in saturated
    assert "The softmax is saturated" not in healthy and "same class" not in healthy
    assert "not saturated at /1" in healthy and "1.05% at step 0" in healthy


def test_the_clipped_loss_prediction_is_computed_from_the_accuracy(tmp_path):
    text = text_for(tmp_path, SATURATED)
    predicted = -math.log(1e-7) * (1 - 0.2)
    assert f"16.1 × (1 − 0.2) = {report.num(predicted)}" in text
    assert f"final test loss at /1 is {report.num(12.9 * 1.05)}, which accounts for it" in text


def test_the_clipped_loss_prediction_says_when_it_does_not_explain_the_loss(tmp_path):
    outcomes = dict(SATURATED, **{"/1": Outcome(final_loss=2.0, final_acc=0.2, clipped=0.8)})
    assert "clipping alone does not explain it" in text_for(tmp_path, outcomes)


def test_slow_small_inputs_are_reported_as_worse_or_better_as_measured(tmp_path):
    behind = text_for(tmp_path / "a", SATURATED)
    ahead = text_for(tmp_path / "b", HEALTHY)
    assert "## /1000 against /255" in behind and "## /1000 against /255" in ahead
    assert "training loss at /1000 is 0.735 (range 0.7–0.77), higher (paired difference +0.21" in behind
    assert "learns more slowly at first" in behind and "/1000 is worse than /255" in behind
    assert "learns faster at first" in ahead and "/1000 is better than /255" in ahead
    assert "more slowly" not in ahead and "/1000 is worse than" not in ahead
    assert "3.92 times smaller" in behind  # 1000 / 255


def test_transforms_are_compared_paired_by_seed_not_by_their_ranges(tmp_path):
    # The seed ranges overlap (0.36-0.396 against 0.35-0.385), but every seed is 0.01 x (1, 1.1) worse.
    outcomes = dict(HEALTHY, **{"/1000": Outcome(train_loss_1=0.52, final_loss=0.36)})
    text = text_for(tmp_path / "a", outcomes)
    assert "/1000 is worse than /255" in text and "higher (paired difference +0.0105, 95% t interval" in text
    same = dict(HEALTHY, **{"/1000": HEALTHY["/255"]})
    text = text_for(tmp_path / "b", same)
    assert "/1000 is indistinguishable from /255" in text and "not distinguishable (paired difference +0" in text


def test_adam_step_compares_gradient_and_step_across_scales(tmp_path):
    text = text_for(tmp_path / "a", SATURATED)
    assert "/1: 0.0105; /255: 0.0105; /1000: 0.0105" in text
    assert "(inputs 1000 times smaller)" in text and "gradient norm falls by a factor 200 (52.5 → 0.263)" in text
    assert "while its relative step stays at 0.0105." in text
    outcomes = dict(SATURATED, **{"/1000": Outcome(grad_norm_0=0.25, update_ratio_0=0.02)})
    assert "while its relative step grows from 0.0105 to 0.021." in text_for(tmp_path / "b", outcomes)
    assert "does not shrink with the gradient: the gradient is 200 times smaller" in text


def test_sharpness_is_compared_with_the_thresholds_as_measured(tmp_path):
    below = text_for(tmp_path / "a", SATURATED)
    above = text_for(tmp_path / "b", HEALTHY)
    assert "above 2/lr = 2000 in 0% of 14 measurements" in below
    # /1000 peaks at 3000 * 1.1 * 2 and starts at 3000 * [1, 1.1] * growth: every measurement is above 2000.
    assert f"/1000: the top Hessian eigenvalue peaks at {report.num(3000 * 1.05 * 2)} (step 30); it is above " \
           "2/lr = 2000 in 100% of 14 measurements" in above  # fmt: skip
    assert "above its threshold 38000 in 0% of 12 measurements" in above


def test_centred_inputs_report_dead_units_and_final_loss_against_the_reference(tmp_path):
    fewer = text_for(tmp_path / "a", SATURATED)
    more = text_for(tmp_path / "b", HEALTHY)
    assert "zscore: 5.25% of the first-layer units are dead at init, fewer than the 31.5% at /255" in fewer
    assert "zscore: 21% of the first-layer units are dead at init, more than the 10.5% at /255" in more
    assert "the final test loss is 0.525 (range 0.5–0.55), higher (paired difference +0.158" in more


def test_without_curvature_only_the_metric_findings_are_stated(tmp_path):
    text = text_for(tmp_path, SATURATED, curvature=False, spectrum=False)
    assert "no curvature.csv" in text and "saturated" not in text and "Hessian" not in text
    assert "/1000 is worse than /255" in text


def test_html_escapes_text_and_embeds_figures(tmp_path):
    f = findings_for(tmp_path, SATURATED, curvature=False, spectrum=False)
    f["config"]["data"]["name"] = "<script>alert(1)</script>"
    page = report.render_html(f, {"loss_curves": b"\x89PNG fake"})
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert '<img src="data:image/png;base64,iVBORyBmYWtl"' in page


def test_main_writes_a_self_contained_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plots, "FIGURE_FORMATS", ("png",))  # SVG is tested in test_plots; halves the time
    run_dir = write_run(tmp_path / "run", RunSpec({"/1": SATURATED["/1"], "/255": SATURATED["/255"]}, seeds=1))
    assert report.main([str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert str(run_dir / "report.md") in printed and str(run_dir / "report.html") in printed
    page = (run_dir / "report.html").read_text()
    # loss_curves, final_vs_divisor, init_diagnostics, sharpness, spectral_density, grad_norms, and the
    # answers' headline (the run has neither /1000 for q2_pace nor other arms nor saved params), each once
    assert page.count("data:image/png;base64,") == 7 and 'src="figures/' not in page
    md = (run_dir / "report.md").read_text()
    assert "](figures/init_diagnostics.png)" in md and (run_dir / "figures" / "init_diagnostics.png").exists()


def test_a_directory_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a directory" in err
    assert report.main(["--no-such-flag"]) == 2
    assert "see --help" in capsys.readouterr().err


def test_zero_gradients_and_steps_do_not_crash_the_ratios(tmp_path):
    outcomes = dict(SATURATED, **{"/1000": Outcome(grad_norm_0=0.0, update_ratio_0=0.0)})
    text = text_for(tmp_path, outcomes)
    assert "/1000: 0;" not in text and "/1000: 0." in text  # the listing still shows the measured 0
    assert "does not shrink with the gradient" not in text and "times less at /1000" not in text


# ---------------------------------------------------------------------------- settings from the axes


def test_two_lrs_compare_the_transforms_at_the_configs_first_lr(tmp_path):
    run = plots.load_run(write_run(tmp_path / "run", RunSpec(dict(SATURATED), lrs=(1e-2, 1e-3))))
    for row in run.metrics:  # model 1 (seed 0, /1, lr 0.001) diverges in epoch 2
        row["diverged"] = row["model"] == 1 and row["epoch"] == 2
    f = report.compute_findings(run)
    assert f["at"] == (1e-2,) and f["ref"] == ("/255", 1e-2) and f["slow"] == ("/1000", 1e-2)
    text = report.render_markdown(f, figure_names=())
    # lr 0.01 comes first in the config, so its numbers are the synthetic ones; lr 0.001's are doubled.
    assert "At lr 0.01 the lowest final test loss is zscore's 0.315 (accuracy 87%)" in text
    assert "/1000 is worse than /255" in text and "84% at step 0" in text
    assert "16 models: inputs /1, /255, /1000, zscore; 2 seeds; 3 epochs; optimiser adam; lr 0.01, 0.001;" in text
    assert "| /255 | 0.001 | 2 | 0 | 1.05 (range 1–1.1) | 0.735 (range 0.7–0.77) | 0.87 |" in text
    assert "Diverged models, left out of the averages: /1, lr 0.001 (1 of 2)." in text
    assert "/255, lr 0.001: the top Hessian eigenvalue peaks at 42 (step 30); it is above 2/lr = 2000" in text


def test_an_extra_setting_axis_is_a_column_and_the_transforms_are_compared_at_its_first_value(tmp_path):
    spec = RunSpec(dict(SATURATED), extra_axes=(Axis("activation", ("tanh", "relu"), str),))
    run = plots.RunData(tmp_path, config_json(spec), spec_axes(spec), metrics_rows(spec), curvature_rows(spec), None)
    f = report.compute_findings(run)
    assert f["at"] == ("tanh", 1e-3) and f["ref"] == ("tanh", "/255", 1e-3) and f["slow"] == ("tanh", "/1000", 1e-3)
    text = report.render_markdown(f, figure_names=())
    assert "optimiser adam; activation tanh, relu; lr 0.001; loss keras-ce" in text
    assert (
        "| activation | inputs | lr | models |" in text and "| relu | /1 | 0.001 | 2 | 0 | 27.3 (range 26–28.6)" in text
    )
    assert "At tanh, lr 0.001 the lowest final test loss is zscore's 0.315" in text
    assert "The softmax is saturated at /1" in text and "84% at step 0" in text  # tanh's numbers, not relu's
    assert "training loss at /1000 is 0.735 (range 0.7–0.77), higher (paired difference" in text
    # Sharpness is stated at the compared setting of the static axes (tanh) only, for every lr.
    assert "zscore: the top Hessian eigenvalue peaks at 21" in text and "relu, zscore: the top" not in text


def test_a_small_real_run_writes_its_heatmap_hyperplanes_and_answers(idx_folder, tmp_path, monkeypatch):
    from analysis import mechanism
    from experiments import scale_grid

    monkeypatch.setattr(plots, "FIGURE_FORMATS", ("png",))
    run_dir = tmp_path / "run"
    argv = ["--data", "idx", "--data-dir", idx_folder, "--hidden", "8", "--optimizer", "sgd", "--lr", "1e-3,1e-2",
            "--inputs", "/1,/255,/1000", "--seeds", "2", "--epochs", "1", "--batch-size", "16",
            "--curvature-examples", "16", "--lanczos-steps", "4", "--density-probes", "0",
            "--no-progress", "--out", run_dir]  # fmt: skip
    assert scale_grid.main([str(a) for a in argv]) == 0
    text = (run_dir / "report.md").read_text()
    assert "## Final test loss over input transform × lr" in text and "cells are trainable" in text
    assert "(figures/heatmap_inputs_lr.png)" in text and "SGD: lr ∝ C²" in text
    planes = mechanism.read(run_dir)
    assert set(planes) == set(range(12)) and all(0 <= p["cut_frac"] <= 1 for p in planes.values())
    # Dividing the pixels moves no hyperplane (zero biases): /1 and /255 of one seed measure the same.
    rows = {(r["seed"], r["inputs"], r["lr"]): r["model"] for r in plots.load_run(run_dir).metrics if r["epoch"] == 1}
    for seed in (0, 1):
        a, b = planes[rows[(seed, "/1", 1e-3)]], planes[rows[(seed, "/255", 1e-3)]]
        assert a["cut_frac"] == b["cut_frac"] and a["distance_median"] == pytest.approx(b["distance_median"], rel=1e-4)
    assert "## Q6. Does centring help, as the accepted answer says?" in text and "cut it, median distance" in text


def test_a_flat_landscape_is_said_to_be_flat_not_to_peak_at_zero(tmp_path):
    outcomes = dict(SATURATED, **{"/1": Outcome(final_loss=12.9, final_acc=0.2, clipped=0.8, top_eig=0.0,
                                                adam_sharpness=0.0)})  # fmt: skip
    text = text_for(tmp_path, outcomes)
    assert "/1: the top Hessian eigenvalue peaks at 0" in text
    assert "Adam's preconditioned sharpness is 0 at every one of its 12 measurements" in text
    assert "sharpness peaks at 0 " not in text
    assert "not defined at step 0" in text  # why the step-0 value is missing
