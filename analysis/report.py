"""The posts' questions answered from one run directory: report.md and a self-contained report.html.

    python -m analysis.report RUN_DIR       # writes RUN_DIR/report.md, report.html, figures/, hyperplanes.csv

The report opens with the study (which arm answers which question) and a headline figure, then one
section per question of the two posts (``analysis.questions``: Q1-Q6 in the posts' words), each
measured sentences with paired 95% t intervals over seeds and one figure (``analysis.answer_plots``),
or "Not supported by this run" and what it lacks; then the details: every setting's final numbers,
the per-transform findings of the posts' network (at the first value of every other setting axis:
the config's first lr) and, over any two numeric axes, heatmaps (``analysis.heatmaps``).

Every number in the text is measured in that run and every claim is a template whose premise is
checked against the data first: a sentence the data does not support is replaced by one saying
what the data shows. Results are kept per setting (``plots.Settings``: a model's values on every
grid axis but the seed). The accepted answer's mechanism (hyperplanes at init) is measured from the
run's saved initial params (``analysis.mechanism``, written to hyperplanes.csv once).
``compute_findings`` (pure) -> ``report_blocks`` -> ``render_markdown`` / ``render_html``.
"""

from __future__ import annotations

import base64
import html
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from analysis import answer_plots, heatmaps, mechanism, plots, questions
from analysis.plots import INPUTS, Key, RunData, Settings, divisor_of, num, usable, value_text
from scalelab.losses import KERAS_EPSILON
from scalelab.results import atomic_write_text
from scalelab.schema import SEED, final_rows
from scalelab.stats import paired_difference

PROG = "analysis.report"
SATURATED = 0.25  # share of examples clipped at p < 1e-7 above which we call the output saturated
SINGLE_CLASS = 0.5  # share given one class above which we say the model predicts (nearly) one class
EPS = f"{KERAS_EPSILON:.0e}".replace("e-0", "e-")  # 1e-7, as Keras' docs write it
ADAM_OPTIMIZERS = ("adam", "adamw")
INIT_FIELDS = (
    "mean_abs_logit",
    "mean_max_prob",
    "clipped_wrong_frac",
    "predicted_class_frac",
    "dead_frac_0",
    "grad_norm_0",
    "update_ratio_0",
    "weight_norm_0",
    "preact_std_0",
)
CAPTIONS = {
    "loss_curves": "Train and test loss per epoch (median over seeds, band = min..max).",
    "final_vs_divisor": "Final test loss and accuracy against the divisor C; centred inputs as dashed lines.",
    "init_diagnostics": "The untrained network (step 0) against the divisor C.",
    "sharpness": "Top Hessian eigenvalue and Adam's preconditioned sharpness against the step, with thresholds.",
    "spectral_density": "Hessian eigenvalue density at initialisation.",
    "grad_norms": "Gradient norms per epoch and per measurement step.",
    "headline": "Every arm on raw pixels against the step: the clip's share, the gradient norm, the top eigenvalue "
    "and the loss (zeros drawn on the symlog axes, hollow circles where a median is exactly 0).",
    "q2_pace": "/1000 against /255: test loss per seed and the paired difference per epoch with its 95% t interval.",
    "arms": "Final test accuracy of every arm at /1 and /255, one dot per seed.",
    "arms_epochs": "Test accuracy per epoch of every arm at /1 and /255.",
    "widths": "Final test accuracy and single-class predictions against the hidden width.",
    "hyperplanes": "First-layer hyperplanes at init: the share that cuts the data cloud and their distance from it.",
}


# ---------------------------------------------------------------------------- findings (pure)


def spread(values) -> dict[str, float] | None:
    """Mean, min and max of the finite values, None if there are none."""
    v = np.asarray([x for x in values if isinstance(x, int | float) and math.isfinite(x)], float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": len(v)} if len(v) else None


def medians(rows, settings: Settings, fields) -> dict[Key, dict[str, float]]:
    """Per setting, the median over models of each field (skipped and non-finite values left out)."""
    out: dict[Key, dict[str, float]] = {}
    for field in fields:
        values: dict[Key, list[float]] = {}
        for row in rows:
            if usable(row, field):
                values.setdefault(settings.key(row), []).append(float(row[field]))
        for key, v in values.items():
            out.setdefault(key, {})[field] = float(np.median(v))
    return out


def last_rows(curvature) -> list[dict[str, Any]]:
    """Each model's last measured (not skipped) curvature row."""
    last: dict[int, dict] = {}
    for row in curvature:
        if not row.get("skipped") and row["step"] >= last.get(row["model"], {"step": -1})["step"]:
            last[row["model"]] = row
    return list(last.values())


def series_finals(metrics, settings: Settings) -> dict[Key, dict[str, Any]]:
    """Per setting, in series order: models, diverged, and mean/min/max of the final test
    loss/accuracy and the training loss after epoch 1 and at the end."""
    finals = final_rows(list(metrics))
    out = {}
    for key in settings.ordered(settings.key(r) for r in finals):
        members = [r for r in finals if settings.key(r) == key]
        healthy = [r for r in members if not r["diverged"]]
        first = [r["train_loss"] for r in metrics if settings.key(r) == key and r["epoch"] == 1 and not r["diverged"]]
        out[key] = {
            "models": len(members),
            "diverged": len(members) - len(healthy),
            "test_loss": spread(r["test_loss"] for r in healthy),
            "test_acc": spread(r["test_acc"] for r in healthy),
            "train_loss_1": spread(first),
            "train_loss": spread(r["train_loss"] for r in healthy),
        }
    return out


def compared_setting(keys, settings: Settings) -> Key:
    """The setting of the other setting axes (all but ``inputs``) the cross-transform comparisons use:
    the first in the axes' order of values (the config's first lr), among those the run has."""
    others = settings.without(INPUTS)
    present = others.ordered(settings.project(k, others) for k in keys)
    return present[0] if present else ()


def reference_key(finals, divisors, settings: Settings) -> Key | None:
    """Among ``divisors``' keys, /255 (what the posts recommend) if the run has it, else the one with
    the lowest final test loss."""
    measured = [k for k in divisors if finals[k]["test_loss"]]
    standard = [k for k in measured if settings.value(k, INPUTS) == "/255"]
    return standard[0] if standard else min(measured, key=lambda k: finals[k]["test_loss"]["mean"], default=None)


def sharpness_findings(curvature, settings: Settings) -> list[dict[str, Any]]:
    """Per setting: the peak of the median top eigenvalue (and Adam's sharpness) and the share of
    measurements above each threshold."""
    out = []
    top = plots.bands(curvature, settings, "step", "top_eig_1")
    adam = plots.bands(curvature, settings, "step", "adam_sharpness")
    for key in settings.ordered(top):
        rows = [r for r in curvature if settings.key(r) == key]
        entry = {"key": key, "top": float(top[key].median.max()), "top_step": int(top[key].x[top[key].median.argmax()])}
        for name, field, threshold in (
            ("sgd", "top_eig_1", "sgd_threshold"),
            ("adam", "adam_sharpness", "adam_threshold"),
        ):
            pairs = [(r[field], r[threshold]) for r in rows if usable(r, field) and usable(r, threshold)]
            if pairs:
                entry[name] = {
                    "threshold": float(np.median([t for _, t in pairs])),
                    "above": float(np.mean([v > t for v, t in pairs])),
                    "n": len(pairs),
                }
        if key in adam:
            entry["adam_peak"] = float(adam[key].median.max())
        out.append(entry)
    return out


def compute_findings(data: RunData, hyperplanes: dict[int, dict[str, float]] | None = None) -> dict[str, Any]:
    """Everything the report states, as numbers; None where the run has not the data for it.

    Results are keyed by setting (``plots.Settings`` of the run's axes); ``at`` is the setting of the
    other setting axes where the transforms are compared (``compared_setting``), ``divisors`` and
    ``centred`` the ``/C`` and the other transforms there.
    """
    settings = Settings.of(data.axes)
    others = settings.without(INPUTS)
    finals = series_finals(data.metrics, settings)
    at = compared_setting(finals, settings)
    compared = [k for k in finals if settings.project(k, others) == at]
    divisor = {k: divisor_of(settings.value(k, INPUTS)) for k in compared}
    curvature = data.curvature or []
    divisors = sorted((k for k in compared if divisor[k] is not None), key=lambda k: divisor[k])
    ref = reference_key(finals, divisors, settings)
    larger = [k for k in divisors if ref and divisor[k] > divisor[ref]]
    return {
        "config": data.config,
        "settings": settings,
        "at": at,
        "finals": finals,
        "init": medians(plots.step0_rows(curvature), settings, INIT_FIELDS),
        "last": medians(last_rows(curvature), settings, ("clipped_wrong_frac", "predicted_class_frac")),
        "divisors": divisors,
        "ref": ref,
        "largest_pixels": divisors[0] if divisors else None,
        "slow": larger[-1] if larger else None,
        "centred": [k for k in compared if divisor[k] is None],
        "sharpness": sharpness_findings(curvature, settings),
        "has_curvature": bool(curvature),
        "heatmaps": heatmaps.heatmap_sections(data.metrics, data.axes, data.config),
        **row_sets(data, hyperplanes),
    }


def row_sets(data: RunData, hyperplanes: dict[int, dict[str, float]] | None) -> dict[str, Any]:
    """The rows the questions read (``analysis.questions.values``): each model's final metrics row,
    its row at every epoch (``epoch1``, ...), its curvature rows at init (``step0``), after epoch 1
    (``epoch_end1``) and at its last measurement (``last_rows``); and the hyperplanes at init by model."""
    curvature = data.curvature or []
    epochs = sorted({int(r["epoch"]) for r in data.metrics})
    return {
        "metrics": data.metrics,
        "curvature": curvature,
        "final_rows": plots.final_models(data.metrics),
        **{f"epoch{e}": [r for r in data.metrics if r["epoch"] == e] for e in epochs},
        "step0": plots.step0_rows(curvature),
        "epoch_end1": [r for r in curvature if r["epoch"] == 1.0 and not r.get("skipped")],
        "last_rows": last_rows(curvature),
        "hyperplanes": hyperplanes,
        "examples": data.config.get("curvature", {}).get("examples", 0),
        "epochs": max(epochs),
    }


# ---------------------------------------------------------------------------- sentences


def transform(f, key: Key) -> str:
    """The key's input transform ("/255"): how the sentences along the inputs axis name a setting."""
    return f["settings"].value(key, INPUTS)


def ratio_of_divisors(f, a: Key, b: Key) -> float:
    """C of ``a`` over C of ``b``: how many times smaller ``a``'s inputs are."""
    return divisor_of(transform(f, a)) / divisor_of(transform(f, b))


def pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def mean_range(s: dict[str, float] | None) -> str:
    if s is None:
        return "n/a"
    return num(s["mean"]) if s["min"] == s["max"] else f"{num(s['mean'])} (range {num(s['min'])}–{num(s['max'])})"


def seed_values(f, key: Key, field: str, rows: str = "final_rows") -> dict[int, float]:
    """{seed: value} of ``field`` over the setting's models in ``f[rows]`` (diverged ones left out)."""
    settings = f["settings"]
    return {
        int(r[SEED]): float(r[field])
        for r in f[rows]
        if settings.key(r) == key and not r.get("diverged") and usable(r, field)
    }


def relation(f, a: Key, b: Key, field: str, rows: str = "final_rows") -> str:
    """'higher than'/'lower than' when the paired 95% t interval of a - b over seeds excludes 0, else
    says it does not; with the interval."""
    d = paired_difference(seed_values(f, a, field, rows), seed_values(f, b, field, rows))
    if d.n < 2:
        return "(one seed: no paired interval) against"
    interval = f"(paired difference {d.mean:+.3g}, 95% t interval [{d.low:.3g}, {d.high:.3g}], n = {d.n})"
    if d.excludes_zero:
        return f"{'higher' if d.mean > 0 else 'lower'} {interval} than"
    return f"not distinguishable {interval} from"


def setup_sentence(f) -> str:
    """The grid and what every model shares: the input transforms first, the other setting axes
    (the lrs, ...) after the optimiser, each with its values in the run."""
    c, settings = f["config"], f["settings"]
    grid, train, opt = c.get("grid", {}), c.get("train", {}), c.get("optimizer", {})
    models = sum(v["models"] for v in f["finals"].values())

    def listing(axis) -> str:
        return f"{axis.name} {', '.join(value_text(axis, v) for v in settings.values(f['finals'], axis.name))}; "

    others = "".join(listing(a) for a in settings.without(INPUTS).axes)
    optimiser = "" if "optimizer" in settings.names else f"optimiser {opt.get('name', '?')}; "
    loss = "" if "loss_name" in settings.names else f"loss {train.get('loss', '?')}; "
    seeds = f"{'up to ' if grid.get('programs') else ''}{grid.get('seeds', '?')} seeds"
    return (
        f"{models} models: {listing(settings.axes[settings.names.index(INPUTS)])}"
        f"{seeds}; {f['epochs']} epochs; {optimiser}"
        f"{others}{loss}data {c.get('data', {}).get('name', '?')}. "
        "Means and ranges are over seeds."
    )


def final_sentences(f) -> list[str]:
    """The best and the worst transform at the compared setting, and every setting with diverged models."""
    ranked = [k for k in f["divisors"] + f["centred"] if f["finals"][k]["test_loss"]]
    ranked.sort(key=lambda k: f["finals"][k]["test_loss"]["mean"])
    out = []
    if len(ranked) >= 2:
        best, worst = f["finals"][ranked[0]], f["finals"][ranked[-1]]
        where = f["settings"].without(INPUTS).describe(f["at"])
        out.append(
            f"{f'At {where} the' if where else 'The'} lowest final test loss is {transform(f, ranked[0])}'s "
            f"{num(best['test_loss']['mean'])} (accuracy {pct(best['test_acc']['mean'])}); the highest is "
            f"{transform(f, ranked[-1])}'s {num(worst['test_loss']['mean'])} "
            f"(accuracy {pct(worst['test_acc']['mean'])})."
        )
    keys = list(f["finals"])
    label = f["settings"].label
    diverged = [f"{label(k, keys)} ({v['diverged']} of {v['models']})" for k, v in f["finals"].items() if v["diverged"]]
    if diverged:
        out.append(f"Diverged models, left out of the averages: {', '.join(diverged)}.")
    return out


def saturation_sentences(f) -> list[str]:
    """Whether the largest pixels saturate the softmax at init, and what Keras' clip then does."""
    key, ref = f["largest_pixels"], f["ref"]
    init, last, final = f["init"].get(key, {}), f["last"].get(key, {}), f["finals"].get(key)
    if not key or "clipped_wrong_frac" not in init:
        return []
    name, out = transform(f, key), []
    logit = init.get("mean_abs_logit")
    if logit is not None:
        compare = f["init"].get(ref, {}).get("mean_abs_logit") if ref and ref != key else None
        out.append(
            f"At initialisation, {name} gives a mean |logit| of {num(logit)}"
            + (f", {num(logit / compare)} times the {num(compare)} at {transform(f, ref)}." if compare else ".")
        )
    clipped = max(init["clipped_wrong_frac"], last.get("clipped_wrong_frac", 0.0))
    when = f"{pct(init['clipped_wrong_frac'])} at step 0" + (
        f" and {pct(last['clipped_wrong_frac'])} at the last measurement" if "clipped_wrong_frac" in last else ""
    )
    share = f"the share of examples whose true class gets p < {EPS} is {when}"
    if clipped <= SATURATED:
        out.append(f"The softmax is not saturated at {name}: {share}, never above {pct(SATURATED)}.")
        return out
    out.append(
        f"The softmax is saturated at {name}: {share}. Keras' clip passes no gradient for those examples, "
        "so they cannot be learnt."
    )
    one_class = last.get("predicted_class_frac", init.get("predicted_class_frac"))
    if one_class is not None and one_class > SINGLE_CLASS:
        ref_class = f["last"].get(ref, {}).get("predicted_class_frac") if ref and ref != key else None
        versus = f" (at {transform(f, ref)}: {pct(ref_class)})" if ref_class is not None else ""
        out.append(
            f"At the last measurement the model gives {pct(one_class)} of the examples the same class{versus}: "
            "it predicts (nearly) one class."
        )
    if final and final["test_acc"] and f["config"].get("train", {}).get("loss") == "keras-ce":
        per_wrong, acc, loss = -math.log(KERAS_EPSILON), final["test_acc"]["mean"], final["test_loss"]["mean"]
        predicted = per_wrong * (1 - acc)
        verdict = (
            "which accounts for it" if abs(predicted - loss) <= 0.25 * loss else "so clipping alone does not explain it"
        )
        out.append(
            f"If every wrong prediction is clipped, the loss is −log({EPS}) × (1 − accuracy) = "
            f"{num(per_wrong)} × (1 − {num(acc)}) = {num(predicted)}; the measured final test loss at {name} is "
            f"{num(loss)}, {verdict}."
        )
    return out


def adam_sentences(f) -> list[str]:
    """Adam's relative first-layer step at init across the divisors, against the gradient's norm."""
    opt = f["config"].get("optimizer", {}).get("name")
    rows = [(k, f["init"][k]) for k in f["divisors"] if "update_ratio_0" in f["init"].get(k, {})]
    if opt not in ADAM_OPTIMIZERS or len(rows) < 2:
        return []
    (big, a), (small, b) = rows[0], rows[-1]
    listing = "; ".join(f"{transform(f, k)}: {num(v['update_ratio_0'])}" for k, v in rows)
    out = [f"Adam's first-layer step relative to the weights, ||lr·update|| / ||W|| at step 0: {listing}."]
    if all(d.get("grad_norm_0", 0) > 0 and d["update_ratio_0"] > 0 for d in (a, b)):
        g, u = a["grad_norm_0"] / b["grad_norm_0"], b["update_ratio_0"] / a["update_ratio_0"]
        before, after = num(a["update_ratio_0"]), num(b["update_ratio_0"])
        moves = (
            f"stays at {before}" if before == after else f"{'grows' if u > 1 else 'shrinks'} from {before} to {after}"
        )
        smaller = num(ratio_of_divisors(f, small, big))
        out.append(
            f"From {transform(f, big)} to {transform(f, small)} (inputs {smaller} times smaller) the "
            f"first layer's gradient norm {'falls' if g >= 1 else 'rises'} by a factor {num(max(g, 1 / g))} "
            f"({num(a['grad_norm_0'])} → {num(b['grad_norm_0'])}), while its relative step {moves}."
        )
        if g > 1 and g > 3 * max(u, 1 / u):
            out.append(
                "Adam divides each gradient by its own running RMS, so its step does not shrink with the gradient: "
                f"the gradient is {num(g)} times smaller, the relative step changes by a factor {num(u)}."
            )
    if "preact_std_0" in a and "preact_std_0" in b:
        out.append(
            f"The same relative step moves the first-layer pre-activations in proportion to the inputs: their "
            f"std at init is {num(a['preact_std_0'])} at {transform(f, big)} and {num(b['preact_std_0'])} "
            f"at {transform(f, small)}."
        )
    return out


def slow_sentences(f) -> list[str]:
    """The next larger divisor than the reference's against it: pace, final loss, and why."""
    ref, other = f["ref"], f["slow"]
    if not ref or not other:
        return []
    a, b = f["finals"][other], f["finals"][ref]
    ref_name, other_name = transform(f, ref), transform(f, other)
    out = []
    if a["train_loss_1"] and b["train_loss_1"]:
        rel = relation(f, other, ref, "train_loss", "epoch1")
        pace = {"higher": "it learns more slowly at first", "lower": "it learns faster at first"}
        word = rel.split()[0]
        out.append(
            f"After epoch 1 the training loss at {other_name} is {mean_range(a['train_loss_1'])}, {rel} "
            f"{mean_range(b['train_loss_1'])} at {ref_name}" + (f": {pace[word]}." if word in pace else ".")
        )
    if a["test_loss"] and b["test_loss"]:
        rel = relation(f, other, ref, "test_loss")
        word = {"higher": "worse than", "lower": "better than"}.get(rel.split()[0], "indistinguishable from")
        out.append(
            f"At the end the test loss at {other_name} is {mean_range(a['test_loss'])}, {rel} "
            f"{mean_range(b['test_loss'])} at {ref_name}: {other_name} is {word} {ref_name} in this run."
        )
    ia, ib = f["init"].get(other, {}), f["init"].get(ref, {})
    if all("grad_norm_0" in d and "preact_std_0" in d for d in (ia, ib)) and ib["preact_std_0"] > 0:
        ratio = ratio_of_divisors(f, other, ref)
        out.append(
            f"Its inputs are {num(ratio)} times smaller, so at init the first layer's pre-activations have "
            f"std {num(ia['preact_std_0'])} against {num(ib['preact_std_0'])}, and its gradient norm is "
            f"{num(ia['grad_norm_0'])} against {num(ib['grad_norm_0'])}."
        )
        if ia.get("update_ratio_0", 0) > 0 and "update_ratio_0" in ib:
            out.append(
                f"Adam's relative first-layer step is {num(ia['update_ratio_0'])} against "
                f"{num(ib['update_ratio_0'])}, so each step changes the first layer's output about "
                f"{num(ratio * ib['update_ratio_0'] / ia['update_ratio_0'])} times less at {other_name}."
            )
    return out


def sharpness_sentences(f) -> list[str]:
    """Per setting: the sharpness' peak and how often it is above each stability threshold."""
    settings = f["settings"]
    static = Settings(tuple(a for a in settings.axes if not heatmaps.is_numeric(a)))
    at = settings.project(f["ref"], static) if f["ref"] else ()
    compared = [e for e in f["sharpness"] if settings.project(e["key"], static) == at]
    out, keys = [], [e["key"] for e in compared]
    for entry in compared:
        name = f["settings"].label(entry["key"], keys)
        text = f"{name}: the top Hessian eigenvalue peaks at {num(entry['top'])} (step {entry['top_step']})"
        if "sgd" in entry:
            s = entry["sgd"]
            text += f"; it is above 2/lr = {num(s['threshold'])} in {pct(s['above'])} of {s['n']} measurements"
        if "adam" in entry:
            s = entry["adam"]
            if entry.get("adam_peak") == 0:
                text += (
                    f"; Adam's preconditioned sharpness is 0 at every one of its {s['n']} measurements (median over "
                    "seeds): the loss is flat on the measured examples, not merely below the threshold"
                )
            else:
                text += (
                    f"; Adam's preconditioned sharpness peaks at {num(entry['adam_peak'])} and is above its threshold "
                    f"{num(s['threshold'])} in {pct(s['above'])} of {s['n']} measurements"
                )
        out.append(text + ".")
    if any("adam" in e for e in compared):
        out.append(
            "Adam's preconditioned sharpness is not defined at step 0: its preconditioner is built from Adam's second "
            "moment, which is 0 before the first update, so it is measured from the first step on."
        )
    return out


def centred_sentences(f) -> list[str]:
    """Each centred transform against the reference: dead units at init and final test loss."""
    ref, out = f["ref"], []
    if not ref:
        return out
    ref_name = transform(f, ref)
    ref_dead, ref_final = f["init"].get(ref, {}).get("dead_frac_0"), f["finals"][ref]["test_loss"]
    for key in f["centred"]:
        parts, dead, final = [], f["init"].get(key, {}).get("dead_frac_0"), f["finals"][key]["test_loss"]
        if dead is not None and ref_dead is not None:
            word = "fewer than" if dead < ref_dead else "more than" if dead > ref_dead else "as many as"
            parts.append(
                f"{pct(dead)} of the first-layer units are dead at init, {word} the {pct(ref_dead)} at {ref_name}"
            )
        if final and ref_final:
            parts.append(
                f"the final test loss is {mean_range(final)}, {relation(f, key, ref, 'test_loss')} "
                f"{mean_range(ref_final)} at {ref_name}"
            )
        if parts:
            out.append(f"{transform(f, key)}: " + "; ".join(parts) + ".")
    return out


# ---------------------------------------------------------------------------- rendering


def final_table(f) -> tuple[list[str], list[list[str]]]:
    """One row per setting: its value on each setting axis, then its models and final numbers."""
    axes = f["settings"].axes
    header = [a.name for a in axes]
    header += ["models", "diverged", "train loss, epoch 1", "final test loss", "final test accuracy"]
    rows = [
        [
            *(value_text(a, v) for a, v in zip(axes, k, strict=True)),
            str(v["models"]),
            str(v["diverged"]),
            mean_range(v["train_loss_1"]),
            mean_range(v["test_loss"]),
            mean_range(v["test_acc"]),
        ]
        for k, v in f["finals"].items()
    ]
    return header, rows


METHOD = (
    "How to read it: a seed fixes the initial weights (shared by every arm of the same shapes and every "
    "transform) and the minibatch order (shared by all), so two arms or transforms are compared paired by "
    "seed: the mean difference with its 95% Student-t interval over the seeds both have. A difference is "
    "called one only when its interval excludes 0; a question the run has no arm for says so."
)


def question_blocks(f: dict[str, Any], figure_names) -> list[tuple]:
    """One section per question: its heading in the posts' words, its sentences, its figure."""
    blocks: list[tuple] = []
    for answer in questions.answers(f):
        blocks += [("h2", f"{answer.key}. {answer.question}")] + [("p", s) for s in answer.sentences]
        supported = not all(s.startswith(questions.NOT_SUPPORTED) for s in answer.sentences)
        if supported and answer.figure in figure_names:
            blocks.append(("figure", answer.figure))
    return blocks


def arms_table(f: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Which arm of the run answers which question, with where it ran and its seeds."""
    rows = []
    for arm in answer_plots.study_arms(f):
        where = [t for t in (questions.RAW, questions.STANDARD, questions.SMALL, *questions.CENTRED)
                 if questions.has(f, arm, t)]  # fmt: skip
        seeds = max(len(questions.values(f, arm, t, "test_acc")) for t in where)
        rows.append([arm.name, ", ".join(where), str(seeds), ARM_QUESTIONS.get(arm.name, "Q5")])
    return ["arm", "input transforms", "seeds", "answers"], rows


ARM_QUESTIONS = {
    questions.BASE_ARM.name: "Q1, Q2, Q6; the reference of every comparison",
    questions.CE_ARM.name: "Q1, Q3",
    questions.SIGMOID_ARM.name: "Q3, Q4",
    questions.SGD_ARM.name: "Q4",
    questions.BUNDLE_ARM.name: "Q4",
}


def report_blocks(f: dict[str, Any], figure_names) -> list[tuple]:
    """The report as ('h1'|'h2'|'p', text), ('table', header, rows) and ('figure', name) blocks."""
    blocks: list[tuple] = [
        ("h1", "Why input scale matters: the posts' questions, answered by this run"),
        ("p", setup_sentence(f)),
        ("p", METHOD),
    ]
    if f["final_rows"] and answer_plots.study_arms(f):
        blocks.append(("table", *arms_table(f)))
    if "headline" in figure_names:
        blocks.append(("figure", "headline"))
    blocks += question_blocks(f, figure_names)
    shown = {b[1] for b in blocks if b[0] == "figure"}
    return blocks + detail_blocks(f, [n for n in figure_names if n not in shown])


def detail_blocks(f: dict[str, Any], figure_names) -> list[tuple]:
    """Every setting's numbers, then the per-transform findings of the posts' network and the heatmaps."""
    largest, ref, slow = (transform(f, k) if k else "" for k in (f["largest_pixels"], f["ref"], f["slow"]))
    sections = [
        ("Final loss and accuracy per input transform", final_sentences(f), ["loss_curves", "final_vs_divisor"]),
        (f"Large inputs ({largest or 'none'}) at initialisation", saturation_sentences(f), ["init_diagnostics"]),
        ("Adam's step and the first layer", adam_sentences(f), []),
        (f"{slow} against {ref}", slow_sentences(f), ["grad_norms"]),
        ("Sharpness against the stability thresholds", sharpness_sentences(f), ["sharpness", "spectral_density"]),
        (f"Centred inputs against {ref}", centred_sentences(f), []),
        *f["heatmaps"],
    ]
    blocks: list[tuple] = [("h2", "Details: every setting"), ("table", *final_table(f))]
    if not f["has_curvature"]:
        blocks.append(
            ("p", "This run has no curvature.csv, so the initialisation and curvature findings are left out.")
        )
    for title, sentences, figures in sections:
        shown = [n for n in figures if n in figure_names]
        if sentences or shown:
            blocks += [("h2", title)] + [("p", s) for s in sentences] + [("figure", n) for n in shown]
    return blocks


def caption(name: str) -> str:
    if name.startswith("heatmap_"):
        return "Median final test loss per cell of two numeric axes, the trainable boundary and the predicted line."
    return CAPTIONS.get(name, name)


def render_markdown(f: dict[str, Any], figure_names) -> str:
    lines = []
    for block in report_blocks(f, figure_names):
        kind = block[0]
        if kind in ("h1", "h2"):
            lines += [("# " if kind == "h1" else "## ") + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            lines += ["| " + " | ".join(block[1]) + " |", "|" + "---|" * len(block[1])]
            lines += ["| " + " | ".join(row) + " |" for row in block[2]] + [""]
        else:
            lines += [f"![{caption(block[1])}](figures/{block[1]}.png)", ""]
    return "\n".join(lines)


def render_html(f: dict[str, Any], figure_pngs: dict[str, bytes]) -> str:
    """Self-contained HTML: figures embedded as base64 PNG data URIs, every text escaped."""
    esc, body = html.escape, []
    for block in report_blocks(f, figure_pngs):
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        else:
            data = base64.b64encode(figure_pngs[block[1]]).decode()
            text = esc(caption(block[1]))
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{text}"><figcaption>{text}</figcaption></figure>'
            )
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>scalelab report</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(run_dir: Path) -> list[Path]:
    """Writes the figures, report.md and report.html; returns every path written."""
    data = plots.load_run(run_dir)
    findings = compute_findings(data, mechanism.ensure(data.path))
    figures = {**plots.build_figures(data), **answer_plots.answer_figures(findings)}
    written = plots.save_figures(figures, data.path / "figures")
    pngs = {p.stem: p.read_bytes() for p in written if p.suffix == ".png"}
    md, page = data.path / "report.md", data.path / "report.html"
    atomic_write_text(md, render_markdown(findings, pngs))
    atomic_write_text(page, render_html(findings, pngs))
    return [*written, md, page]


main = plots.run_dir_command(PROG, __doc__.split("\n\n")[0], write_report)

if __name__ == "__main__":
    sys.exit(main())
