"""Heatmaps over two numeric axes: median final test loss per cell, the trainable boundary, and
where the reparametrisation of ``experiments.lr_equivalence`` predicts equal trajectories.

A run's numeric axes are the vmapped ones (``schema.NUMERIC_KINDS``): the input transform (its
``/C`` values, placed by the divisor C; centred transforms have no C and are left out here) and the
float axes (lr, init scale, eps, weight decay). Whenever two of them take at least two values each
within one setting of the other axes, ``heatmap_panels`` gives one panel per such setting (a
*facet*: a program of the study, or a value of a third numeric axis).

* A cell is the median over seeds of the models' final test loss (diverged models left out; a cell
  with none left is *undefined* and drawn as such).
* **Trainable**: the cell's median final test loss is below the loss of the uniform prediction
  (``chance_loss``: ln 10 = 2.30 for cross-entropy, 0.09 for ``mse`` over 10 classes). A model that
  has learnt nothing of use cannot beat it; raw pixels under Keras' clip sit near 13.
* **Equal trajectories** (``experiments.lr_equivalence``): inputs ``x / C`` with first-layer kernel
  ``W`` is the network ``x / C'`` with kernel ``(C'/C) W``. Under SGD its first-layer step in those
  coordinates is the other's when the lr is multiplied by ``(C/C')**2``: the line ``lr ∝ C**2``
  through the best cell (exact only for the first layer, with its init also rescaled; every other
  layer keeps its lr). With an init-scale axis on the first layer, ``s ∝ C`` is where two cells are
  the same network at init (exactly, with zero biases), for any optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from analysis.plots import INPUTS, LR, Key, Settings, divisor_of, final_models, num, value_text
from scalelab.schema import Axis

CLASSES = 10
INIT_SCALE = "init_scale"  # the axis whose line s ∝ C is drawn
OPTIMIZER = "optimizer"  # the static axis that names the optimiser, when the study varies it
LOSS_NAME = "loss_name"
MAX_PANELS = 6  # facets per figure; more would be unreadable at 1280 px


def chance_loss(loss_name: str, classes: int = CLASSES) -> float:
    """The loss of the uniform prediction p = 1/classes: ln(classes) for cross-entropy; for ``mse``
    (mean over classes of (p - onehot)**2) ((1 - 1/k)**2 + (k - 1)/k**2) / k."""
    if loss_name == "mse":
        k = classes
        return ((1 - 1 / k) ** 2 + (k - 1) / k**2) / k
    return math.log(classes)


def is_numeric(axis: Axis) -> bool:
    """The vmapped axes: the input transform and every float axis (lr, init scale, eps, weight decay)."""
    return axis.name == INPUTS or axis.kind is float


def coordinate(axis: Axis, value: Any) -> float | None:
    """Where a value sits on its numeric axis: C for ``/C`` inputs (None for centred ones), else the number."""
    return divisor_of(value) if axis.name == INPUTS else float(value)


@dataclass(frozen=True)
class Panel:
    """One heatmap: ``x`` and ``y`` numeric axes at one setting (``facet``) of the other axes.

    ``loss``/``acc``/``models`` are (len(ys), len(xs)) arrays of the median final test loss and
    accuracy over the cell's healthy models and their count (NaN / 0 where none)."""

    x: Axis
    y: Axis
    facet: Key
    facet_label: str
    xs: tuple[Any, ...]
    ys: tuple[Any, ...]
    loss: np.ndarray
    acc: np.ndarray
    models: np.ndarray
    chance: float
    optimizer: str

    @property
    def trainable(self) -> np.ndarray:
        """True where the cell's median final test loss is below the uniform prediction's."""
        return np.isfinite(self.loss) & (self.loss < self.chance)

    def best(self) -> tuple[int, int] | None:
        """(row, column) of the lowest defined median loss."""
        if not np.isfinite(self.loss).any():
            return None
        return tuple(int(i) for i in np.unravel_index(np.nanargmin(self.loss), self.loss.shape))  # type: ignore


def numeric_pairs(settings: Settings) -> list[tuple[Axis, Axis]]:
    """Every (x, y) pair of numeric setting axes, the input transform first when it is one of them."""
    numeric = sorted((a for a in settings.axes if is_numeric(a)), key=lambda a: a.name != INPUTS)
    return [(a, b) for i, a in enumerate(numeric) for b in numeric[i + 1 :]]


def panel_values(settings: Settings, keys: Sequence[Key], axis: Axis) -> tuple[Any, ...]:
    """The axis' values among ``keys`` that have a coordinate, in the axis' order."""
    return tuple(v for v in settings.values(keys, axis.name) if coordinate(axis, v) is not None)


def facet_optimizer(settings: Settings, facet_settings: Settings, facet: Key, config: dict) -> str:
    if OPTIMIZER in facet_settings.names:
        return str(facet_settings.value(facet, OPTIMIZER))
    return str(config.get("optimizer", {}).get("name", ""))


def facet_loss_name(facet_settings: Settings, facet: Key, config: dict) -> str:
    if LOSS_NAME in facet_settings.names:
        return str(facet_settings.value(facet, LOSS_NAME))
    return str(config.get("train", {}).get("loss", "ce"))


def cell_arrays(finals, settings: Settings, x: Axis, y: Axis, xs, ys) -> tuple[np.ndarray, ...]:
    """Median final test loss and accuracy and the model count per (y, x) cell of ``finals``' rows."""
    loss, acc = np.full((len(ys), len(xs)), np.nan), np.full((len(ys), len(xs)), np.nan)
    count = np.zeros((len(ys), len(xs)), int)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            cell = [r for r in finals if settings.value(settings.key(r), x.name) == xv
                    and settings.value(settings.key(r), y.name) == yv and math.isfinite(r["test_loss"])]  # fmt: skip
            if cell:
                loss[i, j] = float(np.median([r["test_loss"] for r in cell]))
                acc[i, j] = float(np.median([r["test_acc"] for r in cell]))
                count[i, j] = len(cell)
    return loss, acc, count


def facet_label(settings: Settings, key: Key) -> str:
    """Every axis with its name: "activation relu, lr 0.001"; "all models" when there are none."""
    parts = [f"{a.name} {value_text(a, v)}" for a, v in zip(settings.axes, key, strict=True)]
    return ", ".join(parts) or "all models"


def heatmap_panels(metrics, axes: Sequence[Axis], config: dict) -> dict[tuple[str, str], list[Panel]]:
    """Per (x, y) pair of numeric axes: one panel per facet (setting of the other setting axes) in
    which both axes take at least two values; pairs without such a facet are left out."""
    settings = Settings.of(axes)
    finals = final_models(metrics)
    out: dict[tuple[str, str], list[Panel]] = {}
    for x, y in numeric_pairs(settings):
        others = settings.without(x.name).without(y.name)
        for facet in others.ordered(settings.project(settings.key(r), others) for r in finals):
            rows = [r for r in finals if settings.project(settings.key(r), others) == facet]
            keys = [settings.key(r) for r in rows]
            xs, ys = panel_values(settings, keys, x), panel_values(settings, keys, y)
            if len(xs) < 2 or len(ys) < 2:
                continue
            loss, acc, count = cell_arrays(rows, settings, x, y, xs, ys)
            chance = chance_loss(facet_loss_name(others, facet, config))
            label = facet_label(others, facet)
            optimizer = facet_optimizer(settings, others, facet, config)
            panel = Panel(x, y, facet, label, xs, ys, loss, acc, count, chance, optimizer)
            out.setdefault((x.name, y.name), []).append(panel)
    return out


# ---------------------------------------------------------------------------- equal-trajectory lines


SGD_LINE = "SGD: lr ∝ C² (first-layer step of lr_equivalence)"
SCALE_LINE = "s ∝ C: the same network at init"
LINE_MEANING = {
    SGD_LINE: "inputs x / C with lr η take the first-layer SGD steps of x / C' with lr η (C'/C)² in that "
    "network's coordinates (experiments.lr_equivalence); equal trajectories are predicted only with the first "
    "layer's init also rescaled by C'/C and every other layer's lr unchanged, which this grid does not do, so "
    "cells on the line differ by that much.",
    SCALE_LINE: "inputs x / C with first-layer init scale s are, at init, exactly the network of x / C' with "
    "s C'/C (zero biases); from the first step on, SGD would need the first layer's lr × (C/C')² as well.",
}


def predicted_line(panel: Panel) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(label, x values, y values) of the reparametrisation's line through the best cell, in the
    axes' own units, over the panel's x range; None where it predicts nothing for this pair."""
    best = panel.best()
    if panel.x.name != INPUTS or best is None:
        return None
    row, col = best
    c0, y0 = coordinate(panel.x, panel.xs[col]), coordinate(panel.y, panel.ys[row])
    cs = np.geomspace(min(coordinate(panel.x, v) for v in panel.xs), max(coordinate(panel.x, v) for v in panel.xs), 50)
    if panel.y.name == LR and panel.optimizer == "sgd":
        return SGD_LINE, cs, y0 * (cs / c0) ** 2
    if panel.y.name == INIT_SCALE:
        return SCALE_LINE, cs, y0 * (cs / c0)
    return None


def to_index(values: Sequence[float], points: np.ndarray) -> np.ndarray:
    """Positions of ``points`` on a categorical axis of ``values`` (interpolated in log), NaN outside."""
    logs = np.log(np.asarray(values, float))
    order = np.argsort(logs)
    at = np.log(np.where(points > 0, points, np.nan))
    inside = (at >= logs.min() - 1e-9) & (at <= logs.max() + 1e-9)
    return np.where(inside, np.interp(at, logs[order], np.arange(len(values), dtype=float)[order]), np.nan)


# ---------------------------------------------------------------------------- drawing


def draw_boundary(ax: Axes, trainable: np.ndarray) -> None:
    """A thick line along every cell edge between a trainable and an untrainable cell."""
    rows, cols = trainable.shape
    for i in range(rows):
        for j in range(cols):
            if j + 1 < cols and trainable[i, j] != trainable[i, j + 1]:
                ax.plot([j + 0.5, j + 0.5], [i - 0.5, i + 0.5], color="black", linewidth=3)
            if i + 1 < rows and trainable[i, j] != trainable[i + 1, j]:
                ax.plot([j - 0.5, j + 0.5], [i + 0.5, i + 0.5], color="black", linewidth=3)


def annotate_cells(ax: Axes, panel: Panel) -> None:
    """Each cell's median loss; an untrainable cell marked ✗, an undefined (all diverged) one 'n/a'."""
    for i in range(len(panel.ys)):
        for j in range(len(panel.xs)):
            value = panel.loss[i, j]
            if not np.isfinite(value):
                ax.text(j, i, "n/a\n(diverged)", ha="center", va="center", fontsize="small", color="black")
                continue
            mark = "" if panel.trainable[i, j] else " ✗"
            ax.text(j, i, f"{num(value)}{mark}", ha="center", va="center", fontsize="medium", color="black",
                    bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0, "pad": 1})  # fmt: skip


def draw_panel(ax: Axes, panel: Panel, norm: LogNorm) -> Any:
    image = ax.imshow(np.ma.masked_invalid(panel.loss), cmap="viridis_r", norm=norm, origin="lower", aspect="auto")
    ax.set_facecolor("#d9d9d9")  # undefined cells
    annotate_cells(ax, panel)
    draw_boundary(ax, panel.trainable)
    line = predicted_line(panel)
    if line is not None:
        label, xs, ys = line
        at_x = to_index([coordinate(panel.x, v) for v in panel.xs], xs)
        at_y = to_index([coordinate(panel.y, v) for v in panel.ys], ys)
        ax.plot(at_x, at_y, color="red", linestyle="--", label=label)
    ax.set_xticks(range(len(panel.xs)), [value_text(panel.x, v) for v in panel.xs])
    ax.set_yticks(range(len(panel.ys)), [value_text(panel.y, v) for v in panel.ys])
    ax.set_xlim(-0.5, len(panel.xs) - 0.5)
    ax.set_ylim(-0.5, len(panel.ys) - 0.5)
    ax.set_xlabel("input transform (pixels / C)" if panel.x.name == INPUTS else panel.x.name)
    ax.set_ylabel(panel.y.name)
    ax.set_title(f"{panel.facet_label} (uniform: {num(panel.chance)})", fontsize="medium")
    return image


def plot_heatmap(panels: Sequence[Panel]) -> Figure:
    """One heatmap per facet (at most ``MAX_PANELS``), a shared log colour scale of the median final
    test loss; legend and colour bar outside the cells."""
    shown = list(panels[:MAX_PANELS])
    ncols = min(len(shown), 3)
    nrows = math.ceil(len(shown) / ncols)
    fig = Figure(figsize=(max(4.6 * ncols + 1.2, 8.0), 3.8 * nrows + 1.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    values = np.concatenate([p.loss[np.isfinite(p.loss) & (p.loss > 0)] for p in shown] + [np.array([1.0])])
    norm = LogNorm(vmin=float(values.min()), vmax=float(max(values.max(), values.min() * 1.01)))
    first = shown[0]
    for ax, panel in zip(axes, shown, strict=False):
        image = draw_panel(ax, panel, norm)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[: len(shown)]), label="median final test loss over seeds (log)")
    handles = [h for ax in axes[: len(shown)] for h in ax.get_legend_handles_labels()[0]][:1]
    more = f"; first {MAX_PANELS} of {len(panels)} settings" if len(panels) > MAX_PANELS else ""
    x_name = "input transform" if first.x.name == INPUTS else first.x.name
    fig.suptitle(
        f"Median final test loss over {x_name} × {first.y.name}{more}\n"
        "thick line: trainable boundary; ✗: not below the uniform prediction's loss (in each title)"
    )
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize="small")
    return fig


# ---------------------------------------------------------------------------- sentences


def row_sentence(panel: Panel, i: int) -> str:
    """Where along x one row (y value) of the panel is trainable."""
    where = [value_text(panel.x, v) for v, ok in zip(panel.xs, panel.trainable[i], strict=True) if ok]
    not_where = [value_text(panel.x, v) for v, ok in zip(panel.xs, panel.trainable[i], strict=True) if not ok]
    head = f"{panel.y.name} {value_text(panel.y, panel.ys[i])}: "
    if not where:
        return head + "trainable nowhere"
    return head + f"trainable at {', '.join(where)}" + (f"; not at {', '.join(not_where)}" if not_where else "")


def panel_sentences(panel: Panel) -> list[str]:
    """The count of trainable cells, the best cell, and per y value where x is trainable."""
    cells = panel.loss.size
    best = panel.best()
    head = f"{panel.facet_label}: " if panel.facet_label != "all models" else ""
    out = [
        f"{head}{int(panel.trainable.sum())} of {cells} cells are trainable (median final test loss over seeds "
        f"below the uniform prediction's {num(panel.chance)})"
        + (f"; {int((panel.models == 0).sum())} undefined (every model diverged)" if (panel.models == 0).any() else "")
        + "."
    ]
    if best is not None:
        i, j = best
        out.append(
            f"The lowest median final test loss is {num(panel.loss[i, j])} at {value_text(panel.x, panel.xs[j])}, "
            f"{panel.y.name} {value_text(panel.y, panel.ys[i])} (accuracy {100 * panel.acc[i, j]:.3g}%)."
        )
    out.append("; ".join(row_sentence(panel, i) for i in range(len(panel.ys))) + ".")
    return out


def heatmap_sections(metrics, axes: Sequence[Axis], config: dict) -> list[tuple[str, list[str], list[str]]]:
    """(title, sentences, figure name) per numeric pair with a heatmap."""
    out = []
    for (x, y), panels in heatmap_panels(metrics, axes, config).items():
        x_name = "input transform" if x == INPUTS else x
        sentences = [s for p in panels[:MAX_PANELS] for s in panel_sentences(p)]
        lines = {predicted_line(p)[0] for p in panels[:MAX_PANELS] if predicted_line(p) is not None}
        sentences += [f"Dashed red line ({label}) through each panel's best cell: {LINE_MEANING[label]}"
                      for label in sorted(lines)]  # fmt: skip
        out.append((f"Final test loss over {x_name} × {y}", sentences, [f"heatmap_{x}_{y}"]))
    return out
