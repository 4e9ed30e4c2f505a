"""The report's answers to the posts' questions (analysis.questions) on synthetic studies with arms:
the paired interval on a hand-computed case, every question's section with a number or "not
supported", and answers that flip when the outcome flips."""

import math
import re

import pytest

from analysis import plots, questions, report
from scalelab.stats import paired_difference, t_quantile
from tests.rundir_factory import Outcome, RunSpec, write_run

POSTS = {"model.hidden": [128], "model.activation": "relu", "train.loss": "keras-ce", "optimizer.name": "adam"}
RAW = Outcome(train_loss_1=13.0, final_loss=12.9, final_acc=0.2, clipped=0.8, predicted_class=0.95, grad_norm_0=50.0)
GOOD = Outcome(train_loss_1=0.5, final_loss=0.35, final_acc=0.87)
OUTCOMES = {"/1": RAW, "/255": GOOD, "/1000": Outcome(train_loss_1=0.7, final_loss=0.45, final_acc=0.84),
            "zscore": Outcome(final_loss=0.3), "[-1,1]": Outcome(final_loss=0.33)}  # fmt: skip
LEARNS = Outcome(final_loss=0.9, final_acc=0.7)


def arm(**changes):
    return {**POSTS, "grid.inputs": ["/1", "/255"], **changes}


PROGRAMS = (
    arm(**{"grid.inputs": list(OUTCOMES)}),
    arm(**{"train.loss": "ce"}),
    arm(**{"model.activation": "sigmoid"}),
    arm(**{"optimizer.name": "sgd"}),
    arm(**{"model.activation": "sigmoid", "optimizer.name": "sgd", "train.loss": "mse"}),
    arm(**{"model.hidden": [32]}),
    arm(**{"model.hidden": [512], "grid.seeds": 2}),
)
# On raw pixels the exact cross-entropy and the first post's bundle learn; nothing else does.
CE_LEARNS = {(("loss_name", "ce"), ("inputs", "/1")): LEARNS, (("loss_name", "mse"), ("inputs", "/1")): LEARNS}


def findings(tmp_path, cells=CE_LEARNS, outcomes=OUTCOMES, programs=PROGRAMS, hyperplanes=None, **spec):
    spec = RunSpec(dict(outcomes), seeds=3, programs=programs, cells=dict(cells), spectrum=False, **spec)
    return report.compute_findings(plots.load_run(write_run(tmp_path / "run", spec)), hyperplanes)


def sections(text: str) -> dict[str, str]:
    """'Q1' -> the text of its section (up to the next heading)."""
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.split(".")[0]: p for p in parts if re.match(r"Q\d\.", p)}


def test_the_paired_t_interval_matches_a_hand_computation():
    # d = (1, 2, 3): mean 2, sd 1, n 3: 2 ± t(0.975, 2) / sqrt(3). With 2 degrees of freedom t's
    # quantile has a closed form: (2u - 1) / sqrt(2 u (1 - u)), u = 0.975: 4.3027.
    d = paired_difference({0: 1.0, 1: 2.0, 2: 4.0, 7: 9.0}, {0: 0.0, 1: 0.0, 2: 1.0, 5: 3.0})
    assert d.seeds == (0, 1, 2) and d.n == 3 and d.mean == pytest.approx(2.0)
    t = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert t_quantile(2) == pytest.approx(t, rel=1e-12) and t == pytest.approx(4.3027, abs=1e-4)
    half = t / math.sqrt(3)
    assert (d.low, d.high) == pytest.approx((2 - half, 2 + half), rel=1e-12)
    assert not d.excludes_zero  # 2 - 2.484 < 0
    one = paired_difference({0: 1.0}, {0: 0.5})
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low)


def test_every_question_has_its_section_with_a_number(tmp_path):
    text = report.render_markdown(findings(tmp_path), figure_names=())
    found = sections(text)
    assert list(found) == ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6"]
    for key, question in questions.QUESTIONS.items():
        assert f"## {key}. {question}" in text
        assert re.search(r"\d", found[key].split("\n", 1)[1]), key
    assert "95% t interval" in found["Q2"] and "n = 3" in found["Q2"]


def test_a_run_of_one_network_says_what_it_cannot_answer(tmp_path):
    f = findings(tmp_path, cells={}, programs=())
    found = sections(report.render_markdown(f, figure_names=()))
    assert "Not supported by this run" in found["Q3"] and "exact cross-entropy (ce) or sigmoid arm" in found["Q3"]
    assert "Not supported by this run" in found["Q4"] and "Not supported by this run" in found["Q5"]
    assert "Not supported by this run" in found["Q6"] and "no readable initial params" in found["Q6"]
    assert "test loss of 14.2 (range 12.9–15.5, 3 seeds)" in found["Q1"]  # 12.9 x (1, 1.1, 1.2)


def test_q3_names_the_change_that_lets_raw_pixels_learn_and_flips_with_it(tmp_path):
    ce = sections(report.render_markdown(findings(tmp_path / "a"), figure_names=()))["Q3"]
    # seeds 0..2 measure x (1, 1.1, 1.2): accuracy 0.7 vs 0.2 at every seed: +50 points, sd 0.
    assert "exact cross-entropy (ce) at /1: test accuracy 70%" in ce and "+50 points [50, 50]" in ce
    assert "So: the cross-entropy (its clip) matters" in ce
    sigmoid = {(("activation", "sigmoid"), ("inputs", "/1")): LEARNS}
    relu = sections(report.render_markdown(findings(tmp_path / "b", cells=sigmoid), figure_names=()))["Q3"]
    assert "So: the ReLU matters" in relu and "the cross-entropy (its clip) matters" not in relu
    neither = sections(report.render_markdown(findings(tmp_path / "c", cells={}), figure_names=()))["Q3"]
    assert "neither change alone lets raw pixels learn" in neither


def test_q2_says_worse_or_better_from_the_paired_interval(tmp_path):
    worse = sections(report.render_markdown(findings(tmp_path / "a"), figure_names=()))["Q2"]
    assert "/1000 is worse." in worse and "/1000 learns more slowly at first." in worse
    faster = dict(OUTCOMES, **{"/1000": Outcome(train_loss_1=0.4, final_loss=0.3, final_acc=0.9)})
    better = sections(report.render_markdown(findings(tmp_path / "b", outcomes=faster), figure_names=()))["Q2"]
    assert "/1000 is better." in better and "learns faster at first." in better and "worse." not in better


def test_q1_checks_the_clip_against_the_loss_and_states_the_ce_counterfactual(tmp_path):
    q1 = sections(report.render_markdown(findings(tmp_path / "a"), figure_names=()))["Q1"]
    assert "16.1 × (1 − 0.2) = 12.9: within 15% of the measured loss, so the clip accounts for it." in q1
    assert "ce − Keras' CE: +50 points" in q1 and "the exact loss learns more on raw pixels." in q1
    far = dict(OUTCOMES, **{"/1": Outcome(final_loss=3.0, final_acc=0.2, clipped=0.8)})
    off = sections(report.render_markdown(findings(tmp_path / "b", outcomes=far), figure_names=()))["Q1"]
    assert "so the clip alone does not account for it." in off


def test_q4_and_q5_compare_the_arms_with_the_posts_network(tmp_path):
    text = sections(report.render_markdown(findings(tmp_path), figure_names=()))
    assert "sigmoid + SGD + MSE (the first post's) at /1: test accuracy 70%" in text["Q4"]
    assert "exact cross-entropy (ce) each let the network learn" in text["Q4"]
    assert "SGD instead of Adam and sigmoid instead of relu alone does not" not in text["Q4"]
    assert "Width 512 at /1: test accuracy 20% (2 seeds)" in text["Q5"] and "n = 2" in text["Q5"]
    assert "Width 32 at /1" in text["Q5"]


def test_q6_reads_the_hyperplanes_and_judges_the_accepted_answer(tmp_path):
    base = findings(tmp_path / "a")
    models = {m: questions.values(base, questions.BASE_ARM, t, "model") for t in OUTCOMES for m in [t]}
    cut = {int(i): {"cut_frac": 0.99, "distance_median": 0.9} for ms in models.values() for i in ms.values()}
    q6 = sections(report.render_markdown(findings(tmp_path / "b", hyperplanes=cut), figure_names=()))["Q6"]
    assert "/255: 99% cut it, median distance 0.9" in q6 and "does not support 'the hyperplanes miss the data'" in q6
    assert "zscore − /255, final test loss:" in q6 and "zscore helps." in q6  # 0.3 against 0.35 at every seed
    miss = {i: {"cut_frac": 0.1, "distance_median": 5.0} for i in cut}
    q6 = sections(report.render_markdown(findings(tmp_path / "c", hyperplanes=miss), figure_names=()))["Q6"]
    assert "Fashion-MNIST supports the answer's picture" in q6
