"""A written answer to "why is my loss 13 on raw pixels, and why is /1000 worse than /255?",
computed from one run directory.

    python -m analysis.report RUN_DIR       # writes RUN_DIR/report.md, RUN_DIR/report.html, RUN_DIR/figures/

Every number in the text is measured in that run and every claim is a template whose premise is
checked against the data first: a sentence the data does not support is replaced by one saying
what the data shows. ``compute_findings`` (pure) -> ``report_blocks`` -> ``render_markdown`` /
``render_html``; the figures come from ``analysis.plots``.
"""

from __future__ import annotations

import base64
import html
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from analysis import plots
from analysis.plots import RunData, divisor_of, num, ordered_keys, series_key, usable
from scalelab.losses import KERAS_EPSILON
from scalelab.results import atomic_write_text
from scalelab.schema import final_rows

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
}


# ---------------------------------------------------------------------------- findings (pure)


def spread(values) -> dict[str, float] | None:
    """Mean, min and max of the finite values, None if there are none."""
    v = np.asarray([x for x in values if isinstance(x, int | float) and math.isfinite(x)], float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": len(v)} if len(v) else None


def medians(rows, fields) -> dict[tuple[str, float], dict[str, float]]:
    """Per series, the median over models of each field (skipped and non-finite values left out)."""
    out: dict[tuple[str, float], dict[str, float]] = {}
    for field in fields:
        values: dict[tuple[str, float], list[float]] = {}
        for row in rows:
            if usable(row, field):
                values.setdefault(series_key(row), []).append(float(row[field]))
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


def series_finals(metrics) -> dict[tuple[str, float], dict[str, Any]]:
    """Per series: models, diverged, and mean/min/max of the final test loss/accuracy and the
    training loss after epoch 1 and at the end."""
    finals = final_rows(list(metrics))
    out = {}
    for key in ordered_keys(series_key(r) for r in finals):
        members = [r for r in finals if series_key(r) == key]
        healthy = [r for r in members if not r["diverged"]]
        first = [r["train_loss"] for r in metrics if series_key(r) == key and r["epoch"] == 1 and not r["diverged"]]
        out[key] = {
            "models": len(members),
            "diverged": len(members) - len(healthy),
            "test_loss": spread(r["test_loss"] for r in healthy),
            "test_acc": spread(r["test_acc"] for r in healthy),
            "train_loss_1": spread(first),
            "train_loss": spread(r["train_loss"] for r in healthy),
        }
    return out


def main_lr(config: dict, lrs: list[float]) -> float:
    """The lr the cross-transform comparisons use: the config's first, else the smallest."""
    wanted = [float(x) for x in config.get("grid", {}).get("lrs", [])]
    return next((lr for lr in wanted if lr in lrs), min(lrs))


def reference_key(finals, lr) -> tuple[str, float] | None:
    """/255 (what the posts recommend) if the run has it, else the divisor with the lowest final test loss."""
    divs = [k for k in finals if k[1] == lr and divisor_of(k[0]) is not None and finals[k]["test_loss"]]
    if (std := ("/255", lr)) in divs:
        return std
    return min(divs, key=lambda k: finals[k]["test_loss"]["mean"], default=None)


def sharpness_findings(curvature) -> list[dict[str, Any]]:
    """Per series: the peak of the median top eigenvalue (and Adam's sharpness) and the share of
    measurements above each threshold."""
    out = []
    top, adam = plots.bands(curvature, "step", "top_eig_1"), plots.bands(curvature, "step", "adam_sharpness")
    for key in ordered_keys(top):
        rows = [r for r in curvature if series_key(r) == key]
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


def compute_findings(data: RunData) -> dict[str, Any]:
    """Everything the report states, as numbers; None where the run has not the data for it."""
    finals = series_finals(data.metrics)
    lr = main_lr(data.config, sorted({k[1] for k in finals}))
    curvature = data.curvature or []
    init = medians(plots.step0_rows(curvature), INIT_FIELDS)
    last = medians(last_rows(curvature), ("clipped_wrong_frac", "predicted_class_frac"))
    divisors = sorted(
        (k for k in finals if k[1] == lr and divisor_of(k[0]) is not None), key=lambda k: divisor_of(k[0])
    )
    ref = reference_key(finals, lr)
    larger = [k for k in divisors if ref and divisor_of(k[0]) > divisor_of(ref[0])]
    return {
        "config": data.config,
        "lr": lr,
        "finals": finals,
        "init": init,
        "last": last,
        "divisors": divisors,
        "ref": ref,
        "largest_pixels": divisors[0] if divisors else None,
        "slow": larger[-1] if larger else None,
        "centred": [k for k in finals if k[1] == lr and divisor_of(k[0]) is None],
        "sharpness": sharpness_findings(curvature),
        "has_curvature": bool(curvature),
    }


# ---------------------------------------------------------------------------- sentences


def pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def mean_range(s: dict[str, float] | None) -> str:
    if s is None:
        return "n/a"
    return num(s["mean"]) if s["min"] == s["max"] else f"{num(s['mean'])} (range {num(s['min'])}–{num(s['max'])})"


def relation(a: dict[str, float], b: dict[str, float]) -> str:
    """'higher'/'lower' when the seed ranges do not overlap, else says they overlap."""
    if a["min"] > b["max"]:
        return "higher than"
    if a["max"] < b["min"]:
        return "lower than"
    return "within the seed-to-seed range of"


def setup_sentence(f) -> str:
    c = f["config"]
    grid, train, opt = c.get("grid", {}), c.get("train", {}), c.get("optimizer", {})
    models = sum(v["models"] for v in f["finals"].values())
    return (
        f"{models} models: inputs {', '.join(k[0] for k in ordered_keys(f['finals']))}; "
        f"{grid.get('seeds', '?')} seeds; {train.get('epochs', '?')} epochs; optimiser {opt.get('name', '?')}; "
        f"lr {', '.join(num(x) for x in sorted({k[1] for k in f['finals']}))}; loss {train.get('loss', '?')}; "
        f"data {c.get('data', {}).get('name', '?')}. Means and ranges are over seeds."
    )


def final_sentences(f) -> list[str]:
    ranked = [k for k in f["finals"] if k[1] == f["lr"] and f["finals"][k]["test_loss"]]
    ranked.sort(key=lambda k: f["finals"][k]["test_loss"]["mean"])
    out = []
    if len(ranked) >= 2:
        best, worst = f["finals"][ranked[0]], f["finals"][ranked[-1]]
        out.append(
            f"At lr {num(f['lr'])} the lowest final test loss is {ranked[0][0]}'s {num(best['test_loss']['mean'])} "
            f"(accuracy {pct(best['test_acc']['mean'])}); the highest is {ranked[-1][0]}'s "
            f"{num(worst['test_loss']['mean'])} (accuracy {pct(worst['test_acc']['mean'])})."
        )
    diverged = [f"{k[0]} ({v['diverged']} of {v['models']})" for k, v in f["finals"].items() if v["diverged"]]
    if diverged:
        out.append(f"Diverged models, left out of the averages: {', '.join(diverged)}.")
    return out


def saturation_sentences(f) -> list[str]:
    key, ref = f["largest_pixels"], f["ref"]
    init, last, final = f["init"].get(key or ("", 0), {}), f["last"].get(key or ("", 0), {}), f["finals"].get(key)
    if not key or "clipped_wrong_frac" not in init:
        return []
    name, out = key[0], []
    logit = init.get("mean_abs_logit")
    if logit is not None:
        compare = f["init"].get(ref, {}).get("mean_abs_logit") if ref and ref != key else None
        out.append(
            f"At initialisation, {name} gives a mean |logit| of {num(logit)}"
            + (f", {num(logit / compare)} times the {num(compare)} at {ref[0]}." if compare else ".")
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
        versus = f" (at {ref[0]}: {pct(ref_class)})" if ref_class is not None else ""
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
    opt = f["config"].get("optimizer", {}).get("name")
    rows = [(k, f["init"][k]) for k in f["divisors"] if "update_ratio_0" in f["init"].get(k, {})]
    if opt not in ADAM_OPTIMIZERS or len(rows) < 2:
        return []
    (big, a), (small, b) = rows[0], rows[-1]
    listing = "; ".join(f"{k[0]}: {num(v['update_ratio_0'])}" for k, v in rows)
    out = [f"Adam's first-layer step relative to the weights, ||lr·update|| / ||W|| at step 0: {listing}."]
    if all(d.get("grad_norm_0", 0) > 0 and d["update_ratio_0"] > 0 for d in (a, b)):
        g, u = a["grad_norm_0"] / b["grad_norm_0"], b["update_ratio_0"] / a["update_ratio_0"]
        before, after = num(a["update_ratio_0"]), num(b["update_ratio_0"])
        moves = (
            f"stays at {before}" if before == after else f"{'grows' if u > 1 else 'shrinks'} from {before} to {after}"
        )
        out.append(
            f"From {big[0]} to {small[0]} (inputs {num(divisor_of(small[0]) / divisor_of(big[0]))} times smaller) the "
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
            f"std at init is {num(a['preact_std_0'])} at {big[0]} and {num(b['preact_std_0'])} at {small[0]}."
        )
    return out


def slow_sentences(f) -> list[str]:
    ref, other = f["ref"], f["slow"]
    if not ref or not other:
        return []
    a, b = f["finals"][other], f["finals"][ref]
    out = []
    if a["train_loss_1"] and b["train_loss_1"]:
        rel = relation(a["train_loss_1"], b["train_loss_1"])
        pace = {"higher than": "it learns more slowly at first", "lower than": "it learns faster at first"}
        out.append(
            f"After epoch 1 the training loss at {other[0]} is {mean_range(a['train_loss_1'])}, {rel} "
            f"{mean_range(b['train_loss_1'])} at {ref[0]}" + (f": {pace[rel]}." if rel in pace else ".")
        )
    if a["test_loss"] and b["test_loss"]:
        rel = relation(a["test_loss"], b["test_loss"])
        word = {"higher than": "worse than", "lower than": "better than"}.get(rel, "indistinguishable from")
        out.append(
            f"At the end the test loss at {other[0]} is {mean_range(a['test_loss'])} against "
            f"{mean_range(b['test_loss'])} at {ref[0]}: {other[0]} is {word} {ref[0]} in this run."
        )
    ia, ib = f["init"].get(other, {}), f["init"].get(ref, {})
    if all("grad_norm_0" in d and "preact_std_0" in d for d in (ia, ib)) and ib["preact_std_0"] > 0:
        ratio = divisor_of(other[0]) / divisor_of(ref[0])
        out.append(
            f"Its inputs are {num(ratio)} times smaller, so at init the first layer's pre-activations have "
            f"std {num(ia['preact_std_0'])} against {num(ib['preact_std_0'])}, and its gradient norm is "
            f"{num(ia['grad_norm_0'])} against {num(ib['grad_norm_0'])}."
        )
        if ia.get("update_ratio_0", 0) > 0 and "update_ratio_0" in ib:
            out.append(
                f"Adam's relative first-layer step is {num(ia['update_ratio_0'])} against "
                f"{num(ib['update_ratio_0'])}, so each step changes the first layer's output about "
                f"{num(ratio * ib['update_ratio_0'] / ia['update_ratio_0'])} times less at {other[0]}."
            )
    return out


def sharpness_sentences(f) -> list[str]:
    out = []
    for entry in f["sharpness"]:
        name = entry["key"][0] + (
            f" (lr {num(entry['key'][1])})" if len({e["key"][1] for e in f["sharpness"]}) > 1 else ""
        )
        text = f"{name}: the top Hessian eigenvalue peaks at {num(entry['top'])} (step {entry['top_step']})"
        if "sgd" in entry:
            s = entry["sgd"]
            text += f"; it is above 2/lr = {num(s['threshold'])} in {pct(s['above'])} of {s['n']} measurements"
        if "adam" in entry:
            s = entry["adam"]
            text += (
                f"; Adam's preconditioned sharpness peaks at {num(entry['adam_peak'])} and is above its threshold "
                f"{num(s['threshold'])} in {pct(s['above'])} of {s['n']} measurements"
            )
        out.append(text + ".")
    return out


def centred_sentences(f) -> list[str]:
    ref, out = f["ref"], []
    if not ref:
        return out
    ref_dead, ref_final = f["init"].get(ref, {}).get("dead_frac_0"), f["finals"][ref]["test_loss"]
    for key in f["centred"]:
        parts, dead, final = [], f["init"].get(key, {}).get("dead_frac_0"), f["finals"][key]["test_loss"]
        if dead is not None and ref_dead is not None:
            word = "fewer than" if dead < ref_dead else "more than" if dead > ref_dead else "as many as"
            parts.append(
                f"{pct(dead)} of the first-layer units are dead at init, {word} the {pct(ref_dead)} at {ref[0]}"
            )
        if final and ref_final:
            parts.append(
                f"the final test loss is {mean_range(final)}, {relation(final, ref_final)} "
                f"{mean_range(ref_final)} at {ref[0]}"
            )
        if parts:
            out.append(f"{key[0]}: " + "; ".join(parts) + ".")
    return out


# ---------------------------------------------------------------------------- rendering


def final_table(f) -> tuple[list[str], list[list[str]]]:
    header = ["inputs", "lr", "models", "diverged", "train loss, epoch 1", "final test loss", "final test accuracy"]
    rows = [
        [
            k[0],
            num(k[1]),
            str(v["models"]),
            str(v["diverged"]),
            mean_range(v["train_loss_1"]),
            mean_range(v["test_loss"]),
            mean_range(v["test_acc"]),
        ]
        for k, v in f["finals"].items()
    ]
    return header, rows


def report_blocks(f: dict[str, Any], figure_names) -> list[tuple]:
    """The report as ('h1'|'h2'|'p', text), ('table', header, rows) and ('figure', name) blocks."""
    largest, ref, slow = f["largest_pixels"], f["ref"], f["slow"]
    sections = [
        ("Final loss and accuracy per input transform", final_sentences(f), ["loss_curves", "final_vs_divisor"]),
        (
            f"Large inputs ({largest[0] if largest else 'none'}) at initialisation",
            saturation_sentences(f),
            ["init_diagnostics"],
        ),
        ("Adam's step and the first layer", adam_sentences(f), []),
        (f"{slow[0] if slow else ''} against {ref[0] if ref else ''}", slow_sentences(f), ["grad_norms"]),
        ("Sharpness against the stability thresholds", sharpness_sentences(f), ["sharpness", "spectral_density"]),
        (f"Centred inputs against {ref[0] if ref else ''}", centred_sentences(f), []),
    ]
    blocks: list[tuple] = [
        ("h1", "Why input scale matters: findings of this run"),
        ("p", setup_sentence(f)),
        ("table", *final_table(f)),
    ]
    if not f["has_curvature"]:
        blocks.append(
            ("p", "This run has no curvature.csv, so the initialisation and curvature findings are left out.")
        )
    for title, sentences, figures in sections:
        shown = [n for n in figures if n in figure_names]
        if sentences or shown:
            blocks += [("h2", title)] + [("p", s) for s in sentences] + [("figure", n) for n in shown]
    return blocks


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
            lines += [f"![{CAPTIONS.get(block[1], block[1])}](figures/{block[1]}.png)", ""]
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
            caption = esc(CAPTIONS.get(block[1], block[1]))
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>"
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
    written = plots.save_figures(plots.build_figures(data), data.path / "figures")
    pngs = {p.stem: p.read_bytes() for p in written if p.suffix == ".png"}
    findings = compute_findings(data)
    md, page = data.path / "report.md", data.path / "report.html"
    atomic_write_text(md, render_markdown(findings, pngs))
    atomic_write_text(page, render_html(findings, pngs))
    return [*written, md, page]


main = plots.run_dir_command(PROG, __doc__.split("\n\n")[0], write_report)

if __name__ == "__main__":
    sys.exit(main())
