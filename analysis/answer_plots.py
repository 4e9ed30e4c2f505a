"""The figures of the questions' answers (``analysis.questions``), from the report's findings dict.

Each is a function of ``f`` (``report.compute_findings``) returning a Figure, or None when the run
lacks what it draws. Legends sit outside the data (below the panels); zeros stay visible (symlog
axes, and a marker at 0 where a median is exactly 0); every arm the run has appears in every panel
it belongs to, and an arm missing at one transform is written into the panel as "not run".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis import arms, questions
from analysis.arms import BASE_ARM, NAMED_ARMS, Arm
from analysis.plots import INPUTS, Key, bands, figure_legend
from analysis.questions import RAW, SMALL, STANDARD, values
from scalelab.stats import paired_difference

WIDTH = 12.5  # inches: at 120 dpi the report's 1280 px column shows them at about full size


def figure(ncols: int, title: str, nrows: int = 1, height: float = 3.6) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(WIDTH, height * nrows + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    fig.suptitle(title)
    return fig, axes


def legend_below(fig: Figure, axes: Sequence[Axes], ncol: int = 3) -> None:
    """One legend for the figure, below the panels (outside every data area)."""
    figure_legend(fig, axes, ncol=ncol)


def study_arms(f) -> list[Arm]:
    """The arms the run has at /1 or /255: the named ones, then the widths."""
    keys = [f["settings"].key(r) for r in f["final_rows"]]
    widths = [arms.width_arm(w) for w in arms.widths(f["settings"], keys, f["config"]) if w != 128]
    return [a for a in (*NAMED_ARMS, *widths) if questions.has(f, a, RAW) or questions.has(f, a, STANDARD)]


def arm_key(f, arm: Arm, inputs: str) -> Key | None:
    keys = [f["settings"].key(r) for r in f["final_rows"]]
    found = [
        k for k in arms.arm_keys(f["settings"], keys, f["config"], arm) if f["settings"].value(k, INPUTS) == inputs
    ]
    return found[0] if found else None


def arm_band(f, rows, arm: Arm, inputs: str, x: str, y: str):
    key = arm_key(f, arm, inputs)
    if key is None:
        return None
    return bands([r for r in rows if f["settings"].key(r) == key], f["settings"], x, y).get(key)


def draw_median(ax: Axes, band, label: str, color, style: str = "-") -> None:
    """The median line with its min..max band, and a hollow marker on every exact 0."""
    ax.plot(band.x, band.median, color=color, linestyle=style, marker=".", label=label)
    if np.any(band.high > band.low):
        ax.fill_between(band.x, band.low, band.high, color=color, alpha=0.15, linewidth=0)
    zeros = band.median == 0
    if zeros.any():
        ax.plot(band.x[zeros], band.median[zeros], linestyle="none", marker="o", markerfacecolor="none",
                markeredgecolor=color, markersize=8, label="median exactly 0")  # fmt: skip


HEADLINE = (
    ("clipped_wrong_frac", "share of examples in the clip's flat region\n(p(true class) < 1e-7)", "linear"),
    ("grad_norm", "gradient norm ||∇loss|| (symlog)", "symlog"),
    ("top_eig_1", "top Hessian eigenvalue (symlog)", "symlog"),
    ("loss", "training loss on the measured examples\n(each arm's own loss: CE or MSE; log)", "log"),
)


def plot_headline(f) -> Figure | None:
    """Per arm on raw pixels (and the posts' network at /255, dashed): the clip's share, the gradient
    norm, the top eigenvalue and the loss against the step, median over seeds."""
    if not f["curvature"]:
        return None
    fig, axes = figure(2, "Raw pixels (/1), every arm: the clip's share, the gradient, the curvature and the loss "
                       "(median over seeds, band min..max)", nrows=2)  # fmt: skip
    series = [(a, RAW, "-") for a in study_arms(f)] + [(BASE_ARM, STANDARD, "--")]
    cmap = _colors(len(series))
    for ax, (field, label, scale) in zip(axes, HEADLINE, strict=True):
        for i, (arm, inputs, style) in enumerate(series):
            band = arm_band(f, f["curvature"], arm, inputs, "step", field)
            if band is not None:
                draw_median(ax, band, f"{arm.name} at {inputs}", cmap[i], style)
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=1e-3)
        else:
            ax.set_yscale(scale)
        ax.set_ylabel(label)
        ax.set_xlabel("optimiser step")
    legend_below(fig, axes)
    return fig


def _colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_q2(f) -> Figure | None:
    """/255 and /1000 of the posts' network: the loss per epoch per seed, and the paired difference per
    epoch with its 95% t interval."""
    if not (questions.has(f, BASE_ARM, SMALL) and questions.has(f, BASE_ARM, STANDARD)):
        return None
    fig, (left, right) = figure(2, "/1000 against /255 (the posts' network), paired by seed")
    epochs = sorted({int(r["epoch"]) for r in f["metrics"]})
    for inputs, color in ((STANDARD, "tab:blue"), (SMALL, "tab:orange")):
        per_epoch = [values(f, BASE_ARM, inputs, "test_loss", f"epoch{e}") for e in epochs]
        seeds = sorted(per_epoch[-1])
        for j, s in enumerate(seeds):
            left.plot(epochs, [v.get(s, np.nan) for v in per_epoch], color=color, alpha=0.35, linewidth=1,
                      label=f"{inputs}, one line per seed" if j == 0 else None)  # fmt: skip
    diffs = [paired_difference(values(f, BASE_ARM, SMALL, "test_loss", f"epoch{e}"),
                               values(f, BASE_ARM, STANDARD, "test_loss", f"epoch{e}")) for e in epochs]  # fmt: skip
    mean = np.array([d.mean for d in diffs])
    right.errorbar(epochs, mean, yerr=[mean - [d.low for d in diffs], [d.high for d in diffs] - mean], marker="o",
                   capsize=4, color="black", label="mean paired difference, 95% t interval")  # fmt: skip
    right.axhline(0.0, color="grey", linewidth=1)
    left.set(xlabel="epoch", ylabel="test loss", title="Test loss per seed")
    right.set(xlabel="epoch", ylabel="test loss /1000 − /255", title="Paired difference (> 0: /1000 worse)")
    for ax in (left, right):
        ax.set_xticks(epochs)
    legend_below(fig, (left, right))
    return fig


def strip(ax: Axes, f, arm_list: Sequence[Arm], inputs: str, field: str) -> None:
    """One row per arm: every seed's value as a dot, the median as a bar; 'not run' where absent."""
    for i, arm in enumerate(arm_list):
        v = values(f, arm, inputs, field)
        if not v:
            ax.text(0.5, i, "not run", va="center", ha="center", color="grey", transform=ax.get_yaxis_transform())
            continue
        ax.plot(list(v.values()), [i] * len(v), "o", color="tab:blue", alpha=0.6, label="one seed")
        ax.plot([np.median(list(v.values()))] * 2, [i - 0.3, i + 0.3], color="black", linewidth=2, label="median")
    ax.set_yticks(range(len(arm_list)), [a.name for a in arm_list])
    ax.set_ylim(len(arm_list) - 0.5, -0.5)
    ax.set_title(f"at {inputs}")


def plot_arms(f) -> Figure | None:
    """Final test accuracy of every arm at /1 and at /255, every seed."""
    arm_list = study_arms(f)
    if len(arm_list) < 2:
        return None
    fig, axes = figure(2, f"Final test accuracy per arm after {f['epochs']} epochs (dots: seeds; bar: median)",
                       height=0.45 * len(arm_list) + 1.5)  # fmt: skip
    for ax, inputs in zip(axes, (RAW, STANDARD), strict=True):
        strip(ax, f, arm_list, inputs, "test_acc")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("final test accuracy (chance 0.1)")
    axes[1].set_yticklabels([])
    legend_below(fig, axes)
    return fig


def plot_arms_epochs(f) -> Figure | None:
    """Test accuracy per epoch of every arm on raw pixels (median, min..max over seeds)."""
    arm_list = study_arms(f)
    if not arm_list:
        return None
    fig, axes = figure(2, "Test accuracy per epoch, every arm (median over seeds, band min..max)")
    colors = _colors(len(arm_list))
    for ax, inputs in zip(axes, (RAW, STANDARD), strict=True):
        for arm, color in zip(arm_list, colors, strict=True):
            band = arm_band(f, f["metrics"], arm, inputs, "epoch", "test_acc")
            if band is not None:
                draw_median(ax, band, arm.name, color)
        ax.set(xlabel="epoch", ylabel="test accuracy", title=f"at {inputs}", ylim=(0.0, 1.0))
    legend_below(fig, axes)
    return fig


def plot_widths(f) -> Figure | None:
    """Final test accuracy and the share given one class at the end, against the width, at /1 and /255."""
    keys = [f["settings"].key(r) for r in f["final_rows"]]
    widths = arms.widths(f["settings"], keys, f["config"])
    if len(widths) < 2:
        return None
    fig, axes = figure(2, "Hidden width (posts' network otherwise): dots are seeds, lines medians")
    for inputs, color in ((RAW, "tab:red"), (STANDARD, "tab:blue")):
        for ax, field, rows in ((axes[0], "test_acc", "final_rows"), (axes[1], "predicted_class_frac", "last_rows")):
            per = {w: values(f, arms.width_arm(w), inputs, field, rows) for w in widths}
            shown = [w for w in widths if per[w]]
            for w in shown:
                ax.plot([w] * len(per[w]), list(per[w].values()), "o", color=color, alpha=0.4)
            ax.plot(shown, [np.median(list(per[w].values())) for w in shown], color=color, marker="s", label=inputs)
    for ax, label in zip(axes, ("final test accuracy", "share of examples given the most common class (end)"),
                         strict=True):  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set(xlabel="hidden width", ylabel=label, ylim=(0.0, 1.02))
    legend_below(fig, axes)
    return fig


def plot_hyperplanes(f) -> Figure | None:
    """Per transform at init (posts' network): the share of first-layer hyperplanes cutting the data
    cloud and their median distance from its centroid (in units of its spread), every seed."""
    planes = f["hyperplanes"]
    transforms = [t for t in (RAW, STANDARD, SMALL, *questions.CENTRED) if questions.has(f, BASE_ARM, t)]
    if not planes or not transforms:
        return None
    fig, axes = figure(2, "The accepted answer's hyperplanes at initialisation (first layer; dots: seeds)")
    for ax, field, label in ((axes[0], "cut_frac", "share of units whose hyperplane cuts the data cloud"),
                             (axes[1], "distance_median", "median |mean z| / std z (distance / spread)")):  # fmt: skip
        for i, t in enumerate(transforms):
            models = values(f, BASE_ARM, t, "model")
            ys = [planes[int(m)][field] for m in models.values() if int(m) in planes]
            ax.plot([i] * len(ys), ys, "o", color="tab:green", alpha=0.6, label="one seed")
            ax.plot([i - 0.3, i + 0.3], [np.median(ys)] * 2, color="black", linewidth=2, label="median")
        ax.set_xticks(range(len(transforms)), transforms)
        ax.set(xlabel="input transform", ylabel=label)
    axes[0].set_ylim(0.0, 1.02)
    legend_below(fig, axes)
    return fig


def answer_figures(f) -> dict[str, Figure]:
    makers = {"headline": plot_headline, "q2_pace": plot_q2, "arms": plot_arms, "arms_epochs": plot_arms_epochs,
              "widths": plot_widths, "hyperplanes": plot_hyperplanes}  # fmt: skip
    out = {}
    for name, make in makers.items():
        fig = make(f)
        if fig is not None:
            out[name] = fig
    return out
