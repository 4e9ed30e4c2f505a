"""The posts' six questions, each answered from the run: measured sentences, paired intervals, a figure.

``answers(f)`` gives one ``Answer`` per question, in the posts' words (``QUESTIONS``). Every
comparison between two arms (``analysis.arms``) or two transforms pairs the models by seed and
states the mean difference with its 95% Student-t interval (``scalelab.stats``); a difference is
called a difference only when the interval excludes 0. A question whose arms the run lacks says
"Not supported by this run" and which arm it would need. ``f`` is ``report.compute_findings``' dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from analysis import arms
from analysis.arms import BASE_ARM, BUNDLE_ARM, CE_ARM, SGD_ARM, SIGMOID_ARM, Arm
from analysis.plots import num
from scalelab.losses import KERAS_EPSILON
from scalelab.stats import PairedDifference, paired_difference

QUESTIONS = {
    "Q1": "Why is the loss about 13 on raw pixels?",
    "Q2": "Why is /1000 worse than /255, and is it?",
    "Q3": "Is it the cross-entropy or the ReLU?",
    "Q4": "Why does sigmoid + MSE + SGD learn on raw pixels where ReLU + Adam + CE does not?",
    "Q5": "Why do wider layers stop learning on raw pixels?",
    "Q6": "Does centring help, as the accepted answer says?",
}
RAW, STANDARD, SMALL = "/1", "/255", "/1000"
CENTRED = ("zscore", "[-1,1]")
NOT_SUPPORTED = "Not supported by this run"
CLIPPED = 0.25  # share of examples in the clip's flat region above which the output is called saturated


@dataclass(frozen=True)
class Answer:
    key: str
    question: str
    sentences: list[str]
    figure: str | None


def pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def values(f, arm: Arm, inputs: str, field: str, rows: str = "final_rows") -> dict[int, float]:
    """{seed: value} of ``field`` over the arm's models at ``inputs``, from ``f[rows]``."""
    return arms.values(f[rows], f["settings"], f["config"], arm, inputs, field)


def has(f, arm: Arm, inputs: str) -> bool:
    return bool(values(f, arm, inputs, "test_acc"))


def median(v: Mapping[int, float]) -> float:
    return float(np.median(list(v.values()))) if v else math.nan


def mean_text(v: Mapping[int, float], percent: bool = False) -> str:
    """Mean (range) over seeds, e.g. '12.9 (range 11.4–14.5, 8 seeds)'."""
    show = pct if percent else num
    xs = list(v.values())
    spread = "" if min(xs) == max(xs) else f"range {show(min(xs))}–{show(max(xs))}, "
    return f"{show(float(np.mean(xs)))} ({spread}{len(xs)} seed{'s' * (len(xs) > 1)})"


def interval_text(d: PairedDifference, percent: bool = False) -> str:
    """'+0.0312 [0.011, 0.051] (paired t 95%, n = 8)'; without an interval when n < 2."""
    show = (lambda x: f"{100 * x:+.3g} points") if percent else (lambda x: f"{x:+.3g}")
    if d.n < 2:
        return f"{show(d.mean)} (one seed: no interval)"
    low, high = (100 * d.low, 100 * d.high) if percent else (d.low, d.high)
    return f"{show(d.mean)} [{low:.3g}, {high:.3g}] (paired over seeds, 95% t interval, n = {d.n})"


def verdict(d: PairedDifference, more: str, less: str) -> str:
    """``more`` / ``less`` when the interval excludes 0 on that side, else says it does not."""
    if d.excludes_zero:
        return more if d.mean > 0 else less
    return "no difference this run can distinguish (the interval includes 0)."


def compare(f, a: Arm, a_in: str, b: Arm, b_in: str, field: str, rows: str = "final_rows") -> PairedDifference:
    return paired_difference(values(f, a, a_in, field, rows), values(f, b, b_in, field, rows))


def missing(what: str) -> list[str]:
    return [f"{NOT_SUPPORTED}: it has no {what}."]


# ---------------------------------------------------------------------------- Q1


def q1_sentences(f) -> list[str]:
    """Raw pixels: the final loss, the clip's share, the clip's prediction and the exact-CE counterfactual."""
    if not has(f, BASE_ARM, RAW):
        return missing("models of the posts' network on raw pixels (/1)")
    loss, acc = values(f, BASE_ARM, RAW, "test_loss"), values(f, BASE_ARM, RAW, "test_acc")
    out = [f"The posts' network on raw pixels ends at a test loss of {mean_text(loss)} and an accuracy of "
           f"{mean_text(acc, percent=True)} (the post: 12.9)."]  # fmt: skip
    out += clip_sentences(f)
    if f["config"].get("train", {}).get("loss") == "keras-ce" or "loss_name" in f["settings"].names:
        per_wrong = -math.log(KERAS_EPSILON)
        predicted = per_wrong * (1 - float(np.mean(list(acc.values()))))
        close = abs(predicted - float(np.mean(list(loss.values())))) <= 0.15 * predicted
        out.append(
            f"If every wrong example sits in Keras' clip, the loss is −log(1e-7) × (1 − accuracy) = {num(per_wrong)} × "
            f"(1 − {num(float(np.mean(list(acc.values()))))}) = {num(predicted)}: "
            + (
                "within 15% of the measured loss, so the clip accounts for it."
                if close
                else "more than 15% from the measured loss, so the clip alone does not account for it."
            )  # fmt: skip
        )
    out += ce_sentences(f)
    return out


def clip_sentences(f) -> list[str]:
    """The share of examples in the clip's flat region and the gradient there, at init and at the end."""
    init = values(f, BASE_ARM, RAW, "clipped_wrong_frac", "step0")
    last = values(f, BASE_ARM, RAW, "clipped_wrong_frac", "last_rows")
    grad = values(f, BASE_ARM, RAW, "grad_norm", "last_rows")
    if not init or not last:
        return [f"{NOT_SUPPORTED} for the clip's share: it has no curvature.csv (measured examples)."]
    zero = sum(1 for g in grad.values() if g == 0.0)
    return [
        f"On the {f['examples']} measured training examples, the share whose true class gets p < 1e-7 (Keras' clip: "
        f"no gradient flows through it) is {pct(median(init))} at init and {pct(median(last))} at the last "
        f"measurement (medians over seeds); the gradient norm on those examples at the last measurement is "
        f"{num(median(grad))} (median), exactly 0 for {zero} of {len(grad)} seeds."
    ]


def ce_sentences(f) -> list[str]:
    """The exact cross-entropy arm on raw pixels: its loss at init on the same weights, and what it learns."""
    if not has(f, CE_ARM, RAW):
        return [f"{NOT_SUPPORTED} for the counterfactual: it has no exact cross-entropy (ce) arm at /1."]
    out = []
    keras0, ce0 = values(f, BASE_ARM, RAW, "loss", "step0"), values(f, CE_ARM, RAW, "loss", "step0")
    if keras0 and ce0:
        out.append(
            f"The same initial weights (a seed's weights are shared by both arms) have a loss of {num(median(keras0))} "
            f"under Keras' clipped cross-entropy and {num(median(ce0))} under the exact one on the measured examples: "
            "the clip caps the loss, it does not make the network good."
        )
    d = compare(f, CE_ARM, RAW, BASE_ARM, RAW, "test_acc")
    out.append(
        f"Trained with the exact cross-entropy, raw pixels reach a test accuracy of "
        f"{mean_text(values(f, CE_ARM, RAW, 'test_acc'), percent=True)}; ce − Keras' CE: {interval_text(d, True)}: "
        + verdict(d, "the exact loss learns more on raw pixels.", "the exact loss learns less on raw pixels.")
    )
    return out


# ---------------------------------------------------------------------------- Q2


def q2_sentences(f) -> list[str]:
    """/1000 against /255: the final test loss and the pace (epoch-1 training loss), paired."""
    if not (has(f, BASE_ARM, SMALL) and has(f, BASE_ARM, STANDARD)):
        return missing("posts' network at both /255 and /1000")
    final = compare(f, BASE_ARM, SMALL, BASE_ARM, STANDARD, "test_loss")
    first = compare(f, BASE_ARM, SMALL, BASE_ARM, STANDARD, "train_loss", "epoch1")
    epochs = f["epochs"]
    out = [
        f"After {epochs} epoch{'s' * (epochs > 1)}, test loss /1000 − /255: {interval_text(final)}: "
        + verdict(final, "/1000 is worse.", "/1000 is better.")
        + f" (/255: {mean_text(values(f, BASE_ARM, STANDARD, 'test_loss'))}; "
        f"/1000: {mean_text(values(f, BASE_ARM, SMALL, 'test_loss'))}.)",
        f"After epoch 1, training loss /1000 − /255: {interval_text(first)}: "
        + verdict(first, "/1000 learns more slowly at first.", "/1000 learns faster at first."),
    ]
    g_small, g_std = (
        values(f, BASE_ARM, SMALL, "grad_norm_0", "step0"),
        values(f, BASE_ARM, STANDARD, "grad_norm_0", "step0"),
    )
    u_small = values(f, BASE_ARM, SMALL, "update_ratio_0", "step0")
    u_std = values(f, BASE_ARM, STANDARD, "update_ratio_0", "step0")
    if g_small and g_std and u_small and u_std and first.excludes_zero and first.mean > 0:
        out.append(
            f"Why: at init the first layer's gradient norm is {num(median(g_std))} at /255 and "
            f"{num(median(g_small))} at /1000, but Adam divides each gradient by its running RMS, so its "
            f"relative first-layer step is {num(median(u_std))} and {num(median(u_small))}; the same relative "
            "step moves pre-activations "
            f"{num(1000 / 255)} times less at /1000 (inputs {num(1000 / 255)} times smaller), so the first layer "
            "effectively learns more slowly."
        )
    return out


# ---------------------------------------------------------------------------- Q3 and Q4


def arm_effect(f, arm: Arm, inputs: str) -> str | None:
    """'<arm> at <inputs>: accuracy <mean>; <arm> − posts' network: <interval>: <verdict>' or None."""
    if not (has(f, arm, inputs) and has(f, BASE_ARM, inputs)):
        return None
    d = compare(f, arm, inputs, BASE_ARM, inputs, "test_acc")
    return (
        f"{arm.name} at {inputs}: test accuracy {mean_text(values(f, arm, inputs, 'test_acc'), percent=True)}; "
        f"minus the posts' network: {interval_text(d, True)}: " + verdict(d, "it learns more.", "it learns less.")
    )


def helps(f, arm: Arm, inputs: str = RAW) -> bool:
    """True when the arm's final test accuracy is above the posts' network's, interval excluding 0."""
    d = compare(f, arm, inputs, BASE_ARM, inputs, "test_acc")
    return d.excludes_zero and d.mean > 0


def q3_sentences(f) -> list[str]:
    """On raw pixels: exact CE vs Keras' CE, and sigmoid vs relu, each against the posts' network."""
    effects = {arm: arm_effect(f, arm, RAW) for arm in (CE_ARM, SIGMOID_ARM)}
    if not any(effects.values()):
        return missing("exact cross-entropy (ce) or sigmoid arm at /1 beside the posts' network")
    out = [e for e in effects.values() if e]
    out += [f"{NOT_SUPPORTED} for {a.name}: no such arm at /1." for a, e in effects.items() if not e]
    helped = [a for a in effects if effects[a] and helps(f, a)]
    if effects[CE_ARM] and effects[SIGMOID_ARM]:
        names = {CE_ARM: "the cross-entropy (its clip)", SIGMOID_ARM: "the ReLU"}
        out.append(
            "So: " + (" and ".join(names[a] for a in helped) + (" both matter" if len(helped) == 2 else " matters")
                      if helped else "neither change alone lets raw pixels learn")
            + " in this run (each arm changes one thing and is paired with the posts' network by seed)."
        )  # fmt: skip
    for arm in (CE_ARM, SIGMOID_ARM):
        standard = arm_effect(f, arm, STANDARD)
        if standard:
            out.append(f"For reference, {standard}")
    return out


def q4_sentences(f) -> list[str]:
    """The first post's bundle against the posts' network on raw pixels, and each of its parts alone."""
    bundle = arm_effect(f, BUNDLE_ARM, RAW)
    if not bundle:
        return missing("sigmoid + SGD + MSE arm at /1 beside the posts' network")
    out = [f"After {f['epochs']} epoch{'s' * (f['epochs'] > 1)} (the post: ~85% after 50): {bundle}"]
    parts = {arm: arm_effect(f, arm, RAW) for arm in (SIGMOID_ARM, SGD_ARM, CE_ARM)}
    out += [f"One change at a time: {p}" for p in parts.values() if p]
    if parts[CE_ARM]:
        out.append("(The run has no relu + Adam + MSE arm; the exact cross-entropy is the loss without Keras' clip.)")
    if has(f, BUNDLE_ARM, STANDARD):
        d = compare(f, BUNDLE_ARM, RAW, BUNDLE_ARM, STANDARD, "test_acc")
        out.append(
            f"The bundle itself at /1 − at /255: {interval_text(d, True)}: "
            + verdict(d, "at SGD's fixed lr it learns more on raw pixels than on /255.", "it learns more at /255.")
        )
    helped = [a.name for a, p in parts.items() if p and helps(f, a)]
    not_helped = [a.name for a, p in parts.items() if p and not helps(f, a)]
    if helped or not_helped:
        out.append(
            "So, on raw pixels: "
            + (f"{' and '.join(helped)} each let the network learn" if helped else "no single change lets it learn")
            + (f"; {' and '.join(not_helped)} alone does not" if not_helped else "")
            + "."
        )
    clip_base = values(f, BASE_ARM, RAW, "clipped_wrong_frac", "step0")
    sat = values(f, BUNDLE_ARM, RAW, "saturated_frac_0", "step0")
    grad = values(f, BUNDLE_ARM, RAW, "grad_norm", "last_rows")
    base_grad = values(f, BASE_ARM, RAW, "grad_norm", "last_rows")
    if clip_base and sat and grad and base_grad:
        out.append(
            f"Why, measured: MSE on the softmax has no clip (Keras' CE puts {pct(median(clip_base))} of the examples "
            f"in its flat region at init on raw pixels); the bundle's sigmoid units are saturated for "
            f"{pct(median(sat))} of (example, unit) pairs at init; at the last measurement its gradient norm is "
            f"{num(median(grad))} against {num(median(base_grad))} for the posts' network (medians over seeds)."
        )
    return out


# ---------------------------------------------------------------------------- Q5


def q5_sentences(f) -> list[str]:
    """Widths at /1 (and /255): accuracy paired against width 128, single-class predictions at the end."""
    keys = [f["settings"].key(r) for r in f["final_rows"]]
    widths = [w for w in arms.widths(f["settings"], keys, f["config"]) if has(f, arms.width_arm(w), RAW)]
    if len(widths) < 2:
        return missing("hidden-width axis at /1 (one-layer widths besides 128)")
    out = []
    for w in widths:
        arm = arms.width_arm(w)
        one = values(f, arm, RAW, "predicted_class_frac", "last_rows")
        text = f"Width {w} at /1: test accuracy {mean_text(values(f, arm, RAW, 'test_acc'), percent=True)}"
        if one:
            text += f"; at the last measurement {pct(median(one))} of the examples get the most common class"
        if arm is not BASE_ARM and has(f, BASE_ARM, RAW):
            d = compare(f, arm, RAW, BASE_ARM, RAW, "test_acc")
            text += f"; minus width 128: {interval_text(d, True)}: " + verdict(d, "it learns more.", "it learns less.")
        out.append(text if text.endswith(".") else text + ".")
    out += width_mechanism(f, widths)
    return out


def width_mechanism(f, widths: list[int]) -> list[str]:
    """By width on raw pixels, after the first epoch: mean |logit|, the clip's share, zero gradients."""
    measured = {}
    for w in widths:
        arm = arms.width_arm(w)
        logit, clipped = (values(f, arm, RAW, k, "epoch_end1") for k in ("mean_abs_logit", "clipped_wrong_frac"))
        grad = values(f, arm, RAW, "grad_norm", "epoch_end1")
        if logit and clipped and grad:
            zero = sum(1 for g in grad.values() if g == 0.0)
            measured[w] = f"{w}: |logit| {num(median(logit))}, {pct(median(clipped))} clipped, zero gradient for " \
                          f"{zero} of {len(grad)} seeds"  # fmt: skip
    if len(measured) < 2:
        return []
    return ["After the first epoch on raw pixels, by width (medians over seeds): " + "; ".join(measured.values()) + "."]


# ---------------------------------------------------------------------------- Q6


def q6_sentences(f) -> list[str]:
    """The hyperplanes at init per transform, and the centred transforms against /255, paired."""
    out = hyperplane_sentences(f)
    centred = [c for c in CENTRED if has(f, BASE_ARM, c)]
    if not centred or not has(f, BASE_ARM, STANDARD):
        return out + missing("centred transform (zscore, [-1,1]) beside /255 for the posts' network")
    for c in centred:
        d = compare(f, BASE_ARM, c, BASE_ARM, STANDARD, "test_loss")
        out.append(f"{c} − /255, final test loss: {interval_text(d)}: "
                   + verdict(d, f"{c} is worse.", f"{c} helps."))  # fmt: skip
    return out


def hyperplane_sentences(f) -> list[str]:
    """The cut share and centroid distance per transform; whether the data supports 'the hyperplanes miss'."""
    planes = f["hyperplanes"]
    if not planes:
        return [
            f"{NOT_SUPPORTED} for the mechanism: it has no readable initial params (params/epoch_000.npz) and "
            "training data to measure the hyperplanes on."
        ]
    per = {}
    for inputs in (RAW, STANDARD, SMALL, *CENTRED):
        models = values(f, BASE_ARM, inputs, "model")
        if models:
            rows = [planes[int(m)] for m in models.values() if int(m) in planes]
            per[inputs] = (float(np.median([r["cut_frac"] for r in rows])),
                           float(np.median([r["distance_median"] for r in rows])))  # fmt: skip
    if not per:
        return missing("posts' network models with saved initial params")
    listing = "; ".join(f"{k}: {pct(cut)} cut it, median distance {num(dist)}" for k, (cut, dist) in per.items())
    out = [
        f"At init, the share of first-layer units whose hyperplane cuts the cloud of the {f['examples']} measured "
        f"examples (pre-activation of both signs), and the hyperplanes' median distance from the centroid in units "
        f"of the cloud's spread along their normal (medians over seeds): {listing}."
    ]
    uncentred = [per[k][0] for k in (RAW, STANDARD, SMALL) if k in per]
    if uncentred:
        low = min(uncentred)
        out.append(
            ("Fashion-MNIST supports the answer's picture: " if low < 0.5 else
             "Fashion-MNIST does not support 'the hyperplanes miss the data': ")
            + f"on uncentred pixels at least {pct(low)} of the hyperplanes already cut the cloud; dividing the "
            "pixels by C moves no hyperplane relative to it (zero biases: the ratio is scale-free)."
        )  # fmt: skip
    return out


def answers(f) -> list[Answer]:
    builders = {
        "Q1": (q1_sentences, "init_diagnostics"),
        "Q2": (q2_sentences, "q2_pace"),
        "Q3": (q3_sentences, "arms"),
        "Q4": (q4_sentences, "arms_epochs"),
        "Q5": (q5_sentences, "widths"),
        "Q6": (q6_sentences, "hyperplanes"),
    }
    return [Answer(k, QUESTIONS[k], build(f), figure) for k, (build, figure) in builders.items()]
