"""Figures of a run directory: what each input scale does to the loss, the logits at init, the
curvature and the gradients.

    python -m analysis.plots RUN_DIR        # writes RUN_DIR/figures/*.png and *.svg

Every plot is a function of already-loaded rows and the run's grid axes that returns a
``matplotlib.figure.Figure`` (no pyplot, no global state), so tests can inspect what is drawn;
saving is separate. Rows group into one series per setting (``Settings``: their values on every
axis but the seed), labelled by the axes that vary; the figures along the pixel divisor look the
``inputs`` axis up by name and draw the other setting axes as separate lines. The optional
files (``curvature.csv``, ``spectrum.json``) only add figures: without them those are skipped.
Rows with a non-empty ``skipped`` or non-finite numbers are left out of every median.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from scalelab import cli
from scalelab.errors import ScalelabError
from scalelab.results import RunDir, atomic_write_bytes, read_json
from scalelab.schema import SEED, Axis, axis_names, final_rows, setting_axes

PROG = "analysis.plots"
FIGURE_FORMATS = ("png", "svg")
MAX_SPECTRA = 6  # panels in the spectral-density figure; more would be unreadable


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RunData:
    """Everything the figures and the report read; ``curvature``/``spectrum`` are None when absent."""

    path: Path
    config: dict[str, Any]
    axes: tuple[Axis, ...]
    metrics: list[dict[str, Any]]
    curvature: list[dict[str, Any]] | None
    spectrum: dict[str, Any] | None


def load_run(path: Path) -> RunData:
    """Reads a run directory; config.json as plain JSON, since its sections grow over time."""
    run = RunDir.open(Path(path))
    metrics = run.metrics()
    if not metrics:
        raise ScalelabError(f"{run.metrics_path} has no rows yet; wait until the run has finished an epoch")
    curvature_path, spectrum_path = run.curvature_path, run.spectrum_path
    return RunData(
        path=run.path,
        config=read_json(run.config_path),
        axes=run.axes,
        metrics=metrics,
        curvature=run.curvature() if curvature_path.exists() else None,
        spectrum=run.spectrum() if spectrum_path.exists() else None,
    )


# ---------------------------------------------------------------------------- grouping

INPUTS = "inputs"  # the axis the divisor figures, the spectra and the report compare along
LR = "lr"  # the axis the stability thresholds 2/lr and 38/lr are read from; it does not act before step 1

Key = tuple[Any, ...]  # a row's values on the setting axes, in their order


def num(x: float) -> str:
    """Three significant digits, without an exponent below a million (2000, not 2e+03)."""
    return f"{float(f'{x:.3g}'):g}"


def divisor_of(inputs: str) -> float | None:
    """C for a ``/C`` transform, None for the centred ones (zscore, [-1,1], ...)."""
    if not inputs.startswith("/"):
        return None
    try:
        value = float(inputs[1:])
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def usable(row: dict[str, Any], field: str) -> bool:
    """True when ``row[field]`` is a finite number in a row that was measured (not skipped)."""
    value = row.get(field)
    return not row.get("skipped") and isinstance(value, int | float) and math.isfinite(value)


def value_text(axis: Axis, value: Any) -> str:
    """A value as the figures and the report print it: a float to three digits (``num``), else as is."""
    return num(value) if axis.kind is float else str(value)


def value_label(axis: Axis, value: Any) -> str:
    """A value in a label: a name as it is ("/255", "relu"), a number after its axis' name ("lr 0.01")."""
    return value_text(axis, value) if axis.kind is str else f"{axis.name} {value_text(axis, value)}"


def value_order(axis: Axis, value: Any) -> tuple:
    """Where ``value`` sorts on ``axis``: the ``inputs`` axis by divisor C (largest pixels first), then
    the centred transforms by name; any other axis in its own order of values, unknown values last."""
    if axis.name == INPUTS:
        c = divisor_of(value)
        return (0, c, "") if c is not None else (1, 0.0, str(value))
    return (0, axis.values.index(value), "") if value in axis.values else (1, 0.0, str(value))


@dataclass(frozen=True)
class Settings:
    """How rows group into series: by their values on the setting axes (every grid axis but the seed,
    ``schema.setting_axes``), so that the seeds of one setting are the spread of one series.

    A key is ``tuple(row[a.name] for a in axes)``. Keys sort axis by axis (``value_order``); a label
    names the axes whose values vary among the keys shown (``label``).
    """

    axes: tuple[Axis, ...]

    @classmethod
    def of(cls, axes: Sequence[Axis]) -> Settings:
        """The setting axes of a run's ``axes`` (its seed axis, if there, left out)."""
        return cls(setting_axes(axes))

    @property
    def names(self) -> tuple[str, ...]:
        return axis_names(self.axes)

    def key(self, row: Mapping[str, Any]) -> Key:
        return tuple(row[a.name] for a in self.axes)

    def value(self, key: Key, name: str) -> Any:
        """The key's value on the axis called ``name``."""
        if name not in self.names:
            raise ScalelabError(f"this run has no {name!r} axis (its setting axes: {', '.join(self.names)})")
        return key[self.names.index(name)]

    def without(self, name: str) -> Settings:
        """The other setting axes: a figure along ``name`` draws one line per setting of these."""
        return Settings(tuple(a for a in self.axes if a.name != name))

    def project(self, key: Key, onto: Settings) -> Key:
        """The key's values on ``onto``'s axes (some of these)."""
        return tuple(self.value(key, name) for name in onto.names)

    def ordered(self, keys: Iterable[Key]) -> list[Key]:
        """The distinct keys, sorted axis by axis, each in its axis' order of values."""
        return sorted(set(keys), key=lambda k: tuple(value_order(a, v) for a, v in zip(self.axes, k, strict=True)))

    def values(self, keys: Iterable[Key], name: str) -> list[Any]:
        """The distinct values on the axis ``name`` among ``keys``, in that axis' order."""
        axis = self.axes[self.names.index(name)]
        return sorted({self.value(k, name) for k in keys}, key=lambda v: value_order(axis, v))

    def varying(self, keys: Iterable[Key]) -> list[int]:
        """The positions of the axes whose values differ among ``keys``; with one setting, that of the
        ``inputs`` axis (the study's subject), else of the first axis, so that a label is never empty."""
        keys = list(keys)
        varying = [i for i in range(len(self.axes)) if len({k[i] for k in keys}) > 1]
        if varying or not self.axes:
            return varying
        return [self.names.index(INPUTS) if INPUTS in self.names else 0]

    def label(self, key: Key, keys: Iterable[Key]) -> str:
        """The key's values on the axes that vary among ``keys``: "/255"; "/255, lr 0.01"; "relu, /255"."""
        return ", ".join(value_label(self.axes[i], key[i]) for i in self.varying(keys))

    def describe(self, key: Key) -> str:
        """The key's values on every axis: "lr 0.001"; "relu, lr 0.001"."""
        return ", ".join(value_label(a, v) for a, v in zip(self.axes, key, strict=True))


@dataclass(frozen=True)
class Series:
    """The series one figure draws: their keys in order, with a label and a colour each (a key keeps
    its colour in every panel of the figure)."""

    settings: Settings
    keys: tuple[Key, ...]

    @classmethod
    def of(cls, settings: Settings, rows: Iterable[Mapping[str, Any]]) -> Series:
        """One series per setting among the measured (not skipped) ``rows``."""
        return cls(settings, tuple(settings.ordered(settings.key(r) for r in rows if not r.get("skipped"))))

    def label(self, key: Key) -> str:
        return self.settings.label(key, self.keys)

    def color(self, key: Key):
        cmap = _cmap("tab10" if len(self.keys) <= 10 else "tab20")
        return cmap(self.keys.index(key) % cmap.N)

    def noun(self) -> str:
        """What one series is, for a title: "input transform" when only the transform varies."""
        names = [self.settings.names[i] for i in self.settings.varying(self.keys)]
        return "input transform" if names == [INPUTS] else f"setting ({', '.join(names)})"


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


class Band(NamedTuple):
    """Median and min..max over seeds of one series, at each x."""

    x: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray


def bands(rows: Sequence[dict[str, Any]], settings: Settings, x_field: str, y_field: str) -> dict[Key, Band]:
    """Per series: median, min and max of ``y_field`` over models at each ``x_field`` value."""
    grouped: dict[Key, dict[float, list[float]]] = {}
    for row in rows:
        if usable(row, y_field) and usable(row, x_field):
            grouped.setdefault(settings.key(row), {}).setdefault(float(row[x_field]), []).append(float(row[y_field]))
    out = {}
    for key, by_x in grouped.items():
        xs = sorted(by_x)
        values = [np.asarray(by_x[x]) for x in xs]
        out[key] = Band(np.asarray(xs), *(np.asarray([f(v) for v in values]) for f in (np.median, np.min, np.max)))
    return out


def point_bands(rows: Sequence[dict[str, Any]], settings: Settings, field: str) -> dict[Key, Band]:
    """One-point bands (median, min, max over models) per series, for values with no x axis."""
    return bands([{**r, "_x": 0.0} for r in rows], settings, "_x", field)


def final_models(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's final row, without the diverged models (their numbers are not losses)."""
    return [r for r in final_rows(list(metrics)) if not r["diverged"]]


def step0_rows(curvature: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in curvature if r["step"] == 0 and not r.get("skipped")]


def positive(band: Band) -> Band:
    """The points a log axis can show."""
    keep = band.median > 0
    return Band(*(a[keep] for a in band))


# ---------------------------------------------------------------------------- drawing helpers


def draw_band(ax: Axes, band: Band, label: str, color, marker: str | None = None) -> None:
    ax.plot(band.x, band.median, color=color, label=label, marker=marker)
    if len(band.x) > 0 and np.any(band.high > band.low):
        ax.fill_between(band.x, band.low, band.high, color=color, alpha=0.2, linewidth=0)


def draw_bands(ax: Axes, per_key: dict[Key, Band], series: Series, marker: str, log: bool = True) -> None:
    """Every series' band that has points, in series order (a log axis shows the positive ones; on a
    symlog axis, ``log=False``, zeros are drawn and an exact-0 median gets a hollow circle)."""
    for key in series.keys:
        if key in per_key:
            band = positive(per_key[key]) if log else per_key[key]
            draw_band(ax, band, series.label(key), series.color(key), marker=marker)
            zeros = band.median == 0
            if not log and zeros.any():
                ax.plot(band.x[zeros], band.median[zeros], linestyle="none", marker="o", markersize=8,
                        markerfacecolor="none", markeredgecolor=series.color(key),
                        label="median exactly 0")  # fmt: skip


def draw_against_divisor(ax: Axes, points: dict[Key, Band], series: Series) -> None:
    """``/C`` transforms against C, one line per setting of the other setting axes (error bars =
    min..max over seeds); centred transforms, which have no C, as labelled horizontal lines."""
    settings = series.settings
    others = settings.without(INPUTS)
    rests = others.ordered(settings.project(k, others) for k in points)
    for rest in rests:
        divs = sorted(
            (c, k)
            for k in points
            if settings.project(k, others) == rest and (c := divisor_of(settings.value(k, INPUTS))) is not None
        )
        if divs:
            med = np.array([points[k].median[0] for _, k in divs])
            low = np.array([points[k].low[0] for _, k in divs])
            high = np.array([points[k].high[0] for _, k in divs])
            ax.errorbar(
                [c for c, _ in divs],
                med,
                yerr=[med - low, high - med],
                marker="o",
                capsize=3,
                color="black" if len(rests) == 1 else None,
                label="x / C" + (f", {others.label(rest, rests)}" if len(rests) > 1 else ""),
            )
    for key in series.keys:
        if key in points and divisor_of(settings.value(key, INPUTS)) is None:
            ax.axhline(points[key].median[0], color=series.color(key), linestyle="--", label=series.label(key))
    ax.set_xscale("log")
    ax.set_xlabel("pixel divisor C (inputs = pixels / C), log scale")


def legend(ax: Axes, fontsize: str = "small") -> None:
    """A legend outside the data (right of the axes), when something was drawn (an empty one only warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def figure_legend(fig: Figure, axes: Sequence[Axes], ncol: int = 4, fontsize: str = "small") -> None:
    """One legend for the figure below its panels (outside every data area), each label once."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=ncol, fontsize=fontsize)


def static_settings(settings: Settings) -> Settings:
    """The static axes (those that change the compiled program: every axis that is neither the input
    transform nor a float axis such as lr or init scale); figures facet by them."""
    return Settings(tuple(a for a in settings.axes if a.name != INPUTS and a.kind is not float))


def facets(settings: Settings, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Key, list[Mapping[str, Any]]]]:
    """(static key, its rows) per setting of the static axes, in order; one facet () without them."""
    static = static_settings(settings)
    rows = list(rows)
    keys = static.ordered(settings.project(settings.key(r), static) for r in rows)
    return [(k, [r for r in rows if settings.project(settings.key(r), static) == k]) for k in keys] or [((), rows)]


def facet_title(settings: Settings, key: Key, keys: Iterable[Key] = ()) -> str:
    """The facet's values on the static axes that vary among ``keys`` (all of them without keys),
    two to a line so that three panels to a row keep their titles apart."""
    static = static_settings(settings)
    keys = list(keys)
    shown = [i for i in range(len(static.axes)) if not keys or len({k[i] for k in keys}) > 1] or [0]
    parts = [f"{static.axes[i].name} {value_text(static.axes[i], key[i])}" for i in shown]
    return "\n".join(", ".join(parts[i : i + 2]) for i in range(0, len(parts), 2))


def new_figure(ncols: int, title: str, nrows: int = 1, width: float = 5.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, 4.0 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    fig.suptitle(title)
    return fig, axes


def loss_unit(loss_name: str) -> str:
    return "nats" if loss_name in ("keras-ce", "ce") else "squared error" if loss_name == "mse" else "loss units"


# ---------------------------------------------------------------------------- the figures


def plot_loss_curves(metrics: Sequence[dict[str, Any]], axes: Sequence[Axis], loss_name: str = "keras-ce") -> Figure:
    """Train and test loss per epoch, one line per setting of ``axes`` (the run's grid axes): median
    and min..max band over seeds."""
    settings = Settings.of(axes)
    if len(facets(settings, metrics)) > 1:
        return plot_loss_facets(metrics, settings, loss_name)
    series = Series.of(settings, metrics)
    fig, panels = new_figure(2, f"Loss per epoch by {series.noun()} (line: median over seeds; band: min..max)")
    for ax, field in zip(panels, ("train_loss", "test_loss"), strict=True):
        draw_bands(ax, bands(metrics, settings, "epoch", field), series, "o")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{field.replace('_', ' ')} ({loss_name}, {loss_unit(loss_name)}), log scale")
        ax.set_title(f"{'Training' if field == 'train_loss' else 'Test'} loss")
        legend(ax, "small")
    return fig


FACET_COLUMNS = 3


def facet_grid(count: int, title: str, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    """``count`` panels, three to a row, at a width the report shows at 1280 px; spare panels hidden."""
    nrows = math.ceil(count / FACET_COLUMNS)
    fig = Figure(figsize=(12.5, height * nrows + 1.2), layout="constrained")
    panels = np.atleast_1d(fig.subplots(nrows, FACET_COLUMNS, squeeze=False).ravel())
    for ax in panels[count:]:
        ax.remove()
    fig.suptitle(title)
    return fig, panels[:count]


def plot_loss_facets(metrics: Sequence[dict[str, Any]], settings: Settings, loss_name: str) -> Figure:
    """One panel per setting of the static axes (an arm): train (dashed) and test (solid) loss per
    transform, median over seeds, min..max band on the test loss."""
    groups = facets(settings, metrics)
    fig, panels = facet_grid(len(groups), "Loss per epoch, one panel per program (solid: test, dashed: train; "
                             "median over seeds, band min..max)")  # fmt: skip
    for ax, (key, rows) in zip(panels, groups, strict=True):
        series = Series.of(settings, rows)
        draw_bands(ax, bands(rows, settings, "epoch", "test_loss"), series, "o")
        for k, band in bands(rows, settings, "epoch", "train_loss").items():
            ax.plot(band.x, band.median, color=series.color(k), linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(facet_title(settings, key, [k for k, _ in groups]), fontsize="small")
        ax.set(xlabel="epoch", ylabel=f"loss ({loss_unit(settings_loss(settings, key, loss_name))}), log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure_legend(fig, panels, ncol=5)
    return fig


def settings_loss(settings: Settings, key: Key, default: str) -> str:
    static = static_settings(settings)
    return str(static.value(key, "loss_name")) if "loss_name" in static.names else default


def plot_final_vs_divisor(
    metrics: Sequence[dict[str, Any]], axes: Sequence[Axis], loss_name: str = "keras-ce"
) -> Figure:
    """Final test loss and accuracy against C for ``/C`` inputs, one line per setting of the other
    setting axes; centred inputs as dashed lines."""
    settings = Settings.of(axes)
    finals = final_models(metrics)
    series = Series.of(settings, finals)
    fig, panels = new_figure(
        2, "Final test loss and accuracy against the pixel divisor C (median, min..max over seeds)"
    )
    for ax, field, ylabel in (
        (panels[0], "test_loss", f"final test loss ({loss_name}, {loss_unit(loss_name)}), log scale"),
        (panels[1], "test_acc", "final test accuracy (fraction correct)"),
    ):
        draw_against_divisor(ax, point_bands(finals, settings, field), series)
        ax.set_ylabel(ylabel)
    panels[0].set_yscale("log")
    panels[0].set_title("Test loss after training")
    panels[1].set_title("Test accuracy after training")
    figure_legend(fig, panels, ncol=3, fontsize="x-small")
    return fig


INIT_DIAGNOSTICS = (
    ("mean_abs_logit", "mean |logit| (logit units), log scale", "log"),
    ("mean_max_prob", "mean max softmax probability", "linear"),
    ("clipped_wrong_frac", "fraction with p(true class) < 1e-7", "linear"),
    ("predicted_class_frac", "fraction given the most common class", "linear"),
    ("dead_frac_0", "fraction of first-layer units never active", "linear"),
)


def plot_init_diagnostics(curvature: Sequence[dict[str, Any]], axes: Sequence[Axis]) -> Figure:
    """At initialisation (step 0): logit size, confidence, clipping, single-class predictions and
    dead first-layer units, against C (one line per setting of the other setting axes)."""
    settings = Settings.of(axes)
    rows = step0_rows(curvature)
    series = Series.of(settings, rows)
    fields = [p for p in INIT_DIAGNOSTICS if any(usable(r, p[0]) for r in rows)]
    # Three panels to a row: five in one row are too small to read at 1280 px.
    fig, panels = facet_grid(max(len(fields), 1), "The network at initialisation (step 0) against the pixel divisor C")
    for ax, (field, ylabel, scale) in zip(panels, fields, strict=False):
        draw_against_divisor(ax, point_bands(rows, settings, field), series)
        ax.set_yscale(scale)
        if scale == "linear":  # every linear panel is a fraction; a fixed 0..1 axis keeps small spreads small
            ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(ylabel)
        ax.set_title(field)
    figure_legend(fig, panels, ncol=4, fontsize="x-small")
    return fig


def threshold_values(curvature: Sequence[dict[str, Any]], settings: Settings, field: str) -> dict[float, float]:
    """lr (the value on the ``lr`` axis) -> the (constant) threshold in ``field``, where it is finite."""
    by_lr: dict[float, list[float]] = {}
    for row in curvature:
        if usable(row, field):
            by_lr.setdefault(float(settings.value(settings.key(row), LR)), []).append(float(row[field]))
    return {lr: float(np.median(v)) for lr, v in by_lr.items()}


def draw_thresholds(ax: Axes, curvature: Sequence[dict[str, Any]], settings: Settings) -> None:
    """The SGD (2/lr) and Adam ((2+2b1)/((1-b1) lr)) thresholds of each lr, as grey lines."""
    for field, style, name in (("sgd_threshold", ":", "SGD"), ("adam_threshold", "-.", "Adam")):
        for lr, value in threshold_values(curvature, settings, field).items():
            label = f"{name} threshold {num(value * lr)}/lr = {num(value)}"
            ax.axhline(value, color="grey", linestyle=style, label=label)


def plot_sharpness(curvature: Sequence[dict[str, Any]], axes: Sequence[Axis]) -> Figure:
    """Top Hessian eigenvalue (solid) and Adam's preconditioned sharpness (dashed) against the step,
    median over seeds, one colour per setting, with the stability thresholds 2/lr (SGD) and
    (2+2b1)/((1-b1) lr) (Adam); one panel per program (setting of the static axes). Symlog axes, so
    that a flat landscape (eigenvalue 0) is drawn; Adam's sharpness is undefined at step 0 (its
    second moment is still 0), which the panel says."""
    settings = Settings.of(axes)
    groups = facets(settings, curvature)
    title = "Sharpness during training against the stability thresholds (median over seeds; symlog)"
    if len(groups) > 1:
        fig, panels = facet_grid(len(groups), title)
    else:
        fig, panels = new_figure(1, title, width=9.0)
    for ax, (key, rows) in zip(panels, groups, strict=True):
        draw_sharpness(ax, rows, settings)
        if len(groups) > 1:
            ax.set_title(facet_title(settings, key, [k for k, _ in groups]), fontsize="small")
    if len(groups) > 1:
        figure_legend(fig, panels, ncol=4, fontsize="x-small")
    else:
        legend(panels[0], "x-small")
    return fig


def draw_sharpness(ax: Axes, curvature: Sequence[dict[str, Any]], settings: Settings) -> None:
    series = Series.of(settings, curvature)
    curves = [
        (bands(curvature, settings, "step", field), style, what)
        for field, style, what in (
            ("top_eig_1", "-", "top eigenvalue"),
            ("adam_sharpness", "--", "Adam preconditioned"),
        )
    ]
    for key in series.keys:
        for per_key, style, what in curves:
            if key in per_key:
                x, y = per_key[key][:2]
                ax.plot(
                    x, y, color=series.color(key), linestyle=style, marker=".", label=f"{series.label(key)}: {what}"
                )
    drawn = [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), float) if np.isfinite(y)]
    draw_thresholds(ax, curvature, settings)
    ax.set_yscale("symlog", linthresh=1e-2)
    if drawn and min(drawn) >= 0:
        ax.set_ylim(bottom=0.0)
    adam = any(usable(r, "adam_sharpness") for r in curvature)
    ax.set_xlabel("optimiser step" + (" (Adam's sharpness: undefined at step 0)" if adam else ""))
    ax.set_ylabel("eigenvalue (loss / parameter², symlog)")


def spectrum_models(spectrum: dict[str, Any], axes: Sequence[Axis], limit: int = MAX_SPECTRA) -> list[dict[str, Any]]:
    """One model per network at init, at most ``limit`` spread over them in series order.

    Models that differ only by seed or by lr start from the same network (the lr acts from step 1
    on), so the density is drawn for the lowest seed of each setting of the other setting axes.
    """
    at_init = Settings.of(axes).without(LR)
    chosen: dict[Key, dict] = {}
    for m in sorted(spectrum.get("models", []), key=lambda m: (m[SEED], m["model"])):
        chosen.setdefault(at_init.key(m), m)
    ordered = [chosen[k] for k in at_init.ordered(chosen)]
    if len(ordered) > limit:
        ordered = [ordered[i] for i in np.linspace(0, len(ordered) - 1, limit).round().astype(int)]
    return ordered


def probe_arrays(model: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(probes, k) nodes and weights, ragged probes padded with zero-weight nodes; non-finite dropped."""
    nodes, weights = model.get("nodes", []), model.get("weights", [])
    width = max((len(n) for n in nodes), default=0)
    n_arr, w_arr = np.zeros((len(nodes), width)), np.zeros((len(nodes), width))
    for i, (n, w) in enumerate(zip(nodes, weights, strict=False)):
        n, w = np.asarray(n, float), np.asarray(w, float)
        ok = np.isfinite(n) & np.isfinite(w)
        n_arr[i, : len(n)], w_arr[i, : len(n)] = np.where(ok, n, 0.0), np.where(ok, w, 0.0)
    return n_arr, w_arr


def density_grid(nodes: np.ndarray, weights: np.ndarray, points: int = 600) -> tuple[np.ndarray, float]:
    """A grid 5% wider than the nodes' range and a kernel width of 1% of it, so that the spike
    near 0 and the outliers of every scale are resolved alike."""
    live = nodes[weights > 0]
    lo, hi = (float(live.min()), float(live.max())) if live.size else (-1.0, 1.0)
    span = max(hi - lo, 1e-6 * max(abs(hi), abs(lo), 1.0))
    return np.linspace(lo - 0.05 * span, hi + 0.05 * span, points), span / 100


def plot_spectra(spectrum: dict[str, Any], axes: Sequence[Axis]) -> Figure:
    """Hessian eigenvalue density at init by stochastic Lanczos quadrature, one panel per network at
    init (``spectrum_models``), titled by the values that tell the panels apart."""
    from scalelab.curvature import gaussian_density

    models = spectrum_models(spectrum, axes)
    series = Series.of(Settings.of(axes).without(LR), models)
    fig, panels = facet_grid(
        max(len(models), 1),
        f"Hessian spectral density at initialisation (step {spectrum.get('step', 0)}), one model per {series.noun()}",
    )
    for ax, model in zip(panels, models, strict=False):
        nodes, weights = probe_arrays(model)
        grid, sigma = density_grid(nodes, weights)
        density = np.asarray(gaussian_density(grid, nodes, weights, sigma)) if nodes.size else np.zeros_like(grid)
        floor = density.max() * 1e-8 if density.max() > 0 else 1.0
        ax.plot(grid, np.where(density > floor, density, np.nan), color="black")
        ax.set_yscale("log")
        key = series.settings.key(model)
        ax.set_title(f"{series.label(key)}\n(seed {model[SEED]}, kernel σ={num(sigma)})")  # two lines: fits 3 a row
        ax.set_xlabel("Hessian eigenvalue (loss / parameter²)")
        ax.set_ylabel("density (per unit eigenvalue), log scale")
    return fig


def plot_grad_norms(
    metrics: Sequence[dict[str, Any]], axes: Sequence[Axis], curvature: Sequence[dict[str, Any]] | None = None
) -> Figure:
    """Global gradient norm per epoch (metrics.csv) and, when recorded, per measurement step on the
    fixed examples (curvature.csv), one line per setting: median and min..max over seeds."""
    settings = Settings.of(axes)
    sources = [(metrics, "epoch", "epoch", "per epoch (metrics.csv)")]
    if curvature:
        sources.append((curvature, "step", "optimiser step", "at measurement steps (curvature.csv)"))
    series = Series.of(settings, [r for rows, *_ in sources for r in rows])
    fig, panels = new_figure(
        len(sources), f"Gradient norm (line: median over seeds; band: min..max)\nby {series.noun()}"
    )
    for ax, (rows, x_field, xlabel, where) in zip(panels, sources, strict=True):
        draw_bands(ax, bands(rows, settings, x_field, "grad_norm"), series, ".", log=False)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("||∇loss||₂, symlog (0 is drawn)")
        ax.set_title(f"Gradient norm {where}")
    figure_legend(fig, panels, ncol=3, fontsize="x-small")
    return fig


# ---------------------------------------------------------------------------- assembling and saving


def build_figures(data: RunData) -> dict[str, Figure]:
    """Every figure the run's files allow, by file stem; the curvature ones need curvature.csv/spectrum.json."""
    loss_name = str(data.config.get("train", {}).get("loss", "loss"))
    figures = {
        "loss_curves": plot_loss_curves(data.metrics, data.axes, loss_name),
        "final_vs_divisor": plot_final_vs_divisor(data.metrics, data.axes, loss_name),
    }
    if data.curvature:
        if step0_rows(data.curvature):
            figures["init_diagnostics"] = plot_init_diagnostics(data.curvature, data.axes)
        figures["sharpness"] = plot_sharpness(data.curvature, data.axes)
    if data.spectrum and data.spectrum.get("models"):
        figures["spectral_density"] = plot_spectra(data.spectrum, data.axes)
    figures["grad_norms"] = plot_grad_norms(data.metrics, data.axes, data.curvature)
    from analysis import heatmaps  # it draws with this module's helpers

    for (x, y), panels in heatmaps.heatmap_panels(data.metrics, data.axes, data.config).items():
        figures[f"heatmap_{x}_{y}"] = heatmaps.plot_heatmap(panels)
    return figures


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120)
    return buffer.getvalue()


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Writes each figure as PNG and SVG (atomically: a reader never sees half an image)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScalelabError(f"cannot create {out_dir}: {err.strerror}; is the run directory writable?") from None
    written = []
    for name, fig in figures.items():
        for fmt in FIGURE_FORMATS:
            path = out_dir / f"{name}.{fmt}"
            atomic_write_bytes(path, figure_bytes(fig, fmt))
            written.append(path)
    return written


def write_figures(run_dir: Path) -> list[Path]:
    data = load_run(run_dir)
    return save_figures(build_figures(data), data.path / "figures")


def run_dir_command(prog: str, description: str, write: Callable[[Path], list[Path]]) -> Callable:
    """``python -m PROG RUN_DIR``: calls ``write(RUN_DIR)`` and prints each path written; a bad
    RUN_DIR is one line on stderr (cli.main_wrapper)."""

    def run(argv) -> int:
        p = cli.Parser(prog=f"python -m {prog}", description=description)
        p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by experiments.scale_grid")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        for path in write(p.parse_args(argv).run_dir):
            print(path)
        return 0

    return cli.main_wrapper(prog, run)


main = run_dir_command(PROG, __doc__.split("\n\n")[0], write_figures)

if __name__ == "__main__":
    sys.exit(main())
