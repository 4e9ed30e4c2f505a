"""Figures of a run directory: what each input scale does to the loss, the logits at init, the
curvature and the gradients.

    python -m analysis.plots RUN_DIR        # writes RUN_DIR/figures/*.png and *.svg

Every plot is a function of already-loaded rows that returns a ``matplotlib.figure.Figure``
(no pyplot, no global state), so tests can inspect what is drawn; saving is separate. The optional
files (``curvature.csv``, ``spectrum.json``) only add figures: without them those are skipped.
Rows with a non-empty ``skipped`` or non-finite numbers are left out of every median.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Iterable, Sequence
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
from scalelab.schema import Axis, final_rows

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
        spectrum=read_json(spectrum_path) if spectrum_path.exists() else None,
    )


# ---------------------------------------------------------------------------- grouping


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


def series_key(row: dict[str, Any]) -> tuple[str, float]:
    return row["inputs"], float(row["lr"])


def ordered_keys(keys: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Divisor transforms by C (largest pixels first), then the centred ones by name; then by lr."""

    def order(key):
        c = divisor_of(key[0])
        return (0, c, "", key[1]) if c is not None else (1, 0.0, key[0], key[1])

    return sorted(set(keys), key=order)


def series_label(key: tuple[str, float], keys: Sequence[tuple[str, float]]) -> str:
    """The transform's name, with the lr only when the run has several."""
    several_lrs = len({lr for _, lr in keys}) > 1
    return f"{key[0]} lr={key[1]:g}" if several_lrs else key[0]


def colors_for(keys: Sequence[tuple[str, float]]) -> dict[tuple[str, float], Any]:
    """One colour per series, the same in every figure."""
    cmap = _cmap("tab10" if len(keys) <= 10 else "tab20")
    return {key: cmap(i % cmap.N) for i, key in enumerate(keys)}


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


class Band(NamedTuple):
    """Median and min..max over seeds of one series, at each x."""

    x: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray


def bands(rows: Sequence[dict[str, Any]], x_field: str, y_field: str) -> dict[tuple[str, float], Band]:
    """Per series: median, min and max of ``y_field`` over models at each ``x_field`` value."""
    grouped: dict[tuple[str, float], dict[float, list[float]]] = {}
    for row in rows:
        if usable(row, y_field) and usable(row, x_field):
            grouped.setdefault(series_key(row), {}).setdefault(float(row[x_field]), []).append(float(row[y_field]))
    out = {}
    for key, by_x in grouped.items():
        xs = sorted(by_x)
        values = [np.asarray(by_x[x]) for x in xs]
        out[key] = Band(np.asarray(xs), *(np.asarray([f(v) for v in values]) for f in (np.median, np.min, np.max)))
    return out


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


def draw_against_divisor(ax: Axes, points: dict[tuple[str, float], Band], colors, keys) -> None:
    """``/C`` series as one line per lr against C (error bars = min..max over seeds); centred
    transforms, which have no C, as labelled horizontal lines."""
    lrs = sorted({lr for _, lr in points})
    for lr in lrs:
        divs = sorted((divisor_of(k[0]), k) for k in points if k[1] == lr and divisor_of(k[0]) is not None)
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
                color="black" if len(lrs) == 1 else None,
                label="x / C" + (f" lr={lr:g}" if len(lrs) > 1 else ""),
            )
    for key in keys:
        if key in points and divisor_of(key[0]) is None:
            ax.axhline(points[key].median[0], color=colors[key], linestyle="--", label=series_label(key, keys))
    ax.set_xscale("log")
    ax.set_xlabel("pixel divisor C (inputs = pixels / C), log scale")


def legend(ax: Axes, fontsize: str = "small") -> None:
    """A legend, when something was drawn (an empty one only warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def point_bands(rows: Sequence[dict[str, Any]], field: str) -> dict[tuple[str, float], Band]:
    """One-point bands (median, min, max over models) per series, for values with no x axis."""
    return bands([{**r, "_x": 0.0} for r in rows], "_x", field)


def new_figure(ncols: int, title: str, nrows: int = 1, width: float = 5.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, 4.0 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    fig.suptitle(title)
    return fig, axes


def loss_unit(loss_name: str) -> str:
    return "nats" if loss_name in ("keras-ce", "ce") else "squared error" if loss_name == "mse" else "loss units"


# ---------------------------------------------------------------------------- the figures


def plot_loss_curves(metrics: Sequence[dict[str, Any]], loss_name: str = "keras-ce") -> Figure:
    """Train and test loss per epoch, one line per input transform: median and min..max band over seeds."""
    keys = ordered_keys(series_key(r) for r in metrics)
    colors = colors_for(keys)
    fig, axes = new_figure(2, "Loss per epoch by input transform (line: median over seeds; band: min..max)")
    for ax, field in zip(axes, ("train_loss", "test_loss"), strict=True):
        per_key = bands(metrics, "epoch", field)
        for key in keys:
            if key in per_key:
                draw_band(ax, positive(per_key[key]), series_label(key, keys), colors[key], marker="o")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{field.replace('_', ' ')} ({loss_name}, {loss_unit(loss_name)}), log scale")
        ax.set_title(f"{'Training' if field == 'train_loss' else 'Test'} loss")
        legend(ax, "small")
    return fig


def plot_final_vs_divisor(metrics: Sequence[dict[str, Any]], loss_name: str = "keras-ce") -> Figure:
    """Final test loss and accuracy against C for ``/C`` inputs; centred inputs as dashed lines."""
    finals = final_models(metrics)
    keys = ordered_keys(series_key(r) for r in finals)
    colors = colors_for(keys)
    fig, axes = new_figure(2, "Final test loss and accuracy against the pixel divisor C (median, min..max over seeds)")
    for ax, field, ylabel in (
        (axes[0], "test_loss", f"final test loss ({loss_name}, {loss_unit(loss_name)}), log scale"),
        (axes[1], "test_acc", "final test accuracy (fraction correct)"),
    ):
        draw_against_divisor(ax, point_bands(finals, field), colors, keys)
        ax.set_ylabel(ylabel)
        legend(ax, "small")
    axes[0].set_yscale("log")
    axes[0].set_title("Test loss after training")
    axes[1].set_title("Test accuracy after training")
    return fig


INIT_DIAGNOSTICS = (
    ("mean_abs_logit", "mean |logit| (logit units), log scale", "log"),
    ("mean_max_prob", "mean max softmax probability", "linear"),
    ("clipped_wrong_frac", "fraction with p(true class) < 1e-7", "linear"),
    ("predicted_class_frac", "fraction given the most common class", "linear"),
    ("dead_frac_0", "fraction of first-layer units never active", "linear"),
)


def plot_init_diagnostics(curvature: Sequence[dict[str, Any]]) -> Figure:
    """At initialisation (step 0): logit size, confidence, clipping, single-class predictions and
    dead first-layer units, against C."""
    rows = step0_rows(curvature)
    keys = ordered_keys(series_key(r) for r in rows)
    colors = colors_for(keys)
    panels = [p for p in INIT_DIAGNOSTICS if any(usable(r, p[0]) for r in rows)]
    fig, axes = new_figure(
        max(len(panels), 1), "The network at initialisation (step 0) against the pixel divisor C", width=4.0
    )
    for ax, (field, ylabel, scale) in zip(axes, panels, strict=False):
        draw_against_divisor(ax, point_bands(rows, field), colors, keys)
        ax.set_yscale(scale)
        if scale == "linear":  # every linear panel is a fraction; a fixed 0..1 axis keeps small spreads small
            ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(ylabel)
        ax.set_title(field)
        legend(ax, "x-small")
    return fig


def threshold_values(curvature: Sequence[dict[str, Any]], field: str) -> dict[float, float]:
    """lr -> the (constant) threshold in ``field``, where it is finite."""
    return {lr: float(np.median(v)) for lr, v in _by_lr(curvature, field).items()}


def _by_lr(rows, field):
    out: dict[float, list[float]] = {}
    for row in rows:
        if usable(row, field):
            out.setdefault(float(row["lr"]), []).append(float(row[field]))
    return out


def plot_sharpness(curvature: Sequence[dict[str, Any]]) -> Figure:
    """Top Hessian eigenvalue (solid) and Adam's preconditioned sharpness (dashed) against the step,
    median over seeds, with the stability thresholds 2/lr (SGD) and (2+2b1)/((1-b1) lr) (Adam)."""
    keys = ordered_keys(series_key(r) for r in curvature if not r.get("skipped"))
    colors = colors_for(keys)
    fig, axes = new_figure(
        1, "Sharpness during training against the stability thresholds (median over seeds)", width=9.0
    )
    ax = axes[0]
    top, adam = bands(curvature, "step", "top_eig_1"), bands(curvature, "step", "adam_sharpness")
    for key in keys:
        if key in top:
            ax.plot(
                *positive(top[key])[:2],
                color=colors[key],
                marker=".",
                label=f"{series_label(key, keys)}: top eigenvalue",
            )
        if key in adam:
            ax.plot(
                *positive(adam[key])[:2],
                color=colors[key],
                linestyle="--",
                marker=".",
                label=f"{series_label(key, keys)}: Adam preconditioned",
            )
    for field, style, name in (("sgd_threshold", ":", "SGD"), ("adam_threshold", "-.", "Adam")):
        for lr, value in threshold_values(curvature, field).items():
            ax.axhline(
                value, color="grey", linestyle=style, label=f"{name} threshold {num(value * lr)}/lr = {num(value)}"
            )
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("eigenvalue (loss / parameter², log scale)")
    legend(ax, "x-small")
    return fig


def spectrum_models(spectrum: dict[str, Any], limit: int = MAX_SPECTRA) -> list[dict[str, Any]]:
    """One model per input transform (lowest seed, lowest lr), at most ``limit`` spread over the scales."""
    chosen: dict[str, dict] = {}
    for m in sorted(spectrum.get("models", []), key=lambda m: (m["seed"], m["lr"])):
        chosen.setdefault(m["inputs"], m)
    ordered = [chosen[k] for k, _ in ordered_keys((name, 0.0) for name in chosen)]
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


def plot_spectra(spectrum: dict[str, Any]) -> Figure:
    """Hessian eigenvalue density at init by stochastic Lanczos quadrature, one panel per scale."""
    from scalelab.curvature import gaussian_density

    models = spectrum_models(spectrum)
    fig, axes = new_figure(
        max(len(models), 1),
        f"Hessian spectral density at initialisation (step {spectrum.get('step', 0)}), one model per input transform",
        width=3.6,
    )
    for ax, model in zip(axes, models, strict=False):
        nodes, weights = probe_arrays(model)
        grid, sigma = density_grid(nodes, weights)
        density = np.asarray(gaussian_density(grid, nodes, weights, sigma)) if nodes.size else np.zeros_like(grid)
        floor = density.max() * 1e-8 if density.max() > 0 else 1.0
        ax.plot(grid, np.where(density > floor, density, np.nan), color="black")
        ax.set_yscale("log")
        ax.set_title(f"{model['inputs']} (seed {model['seed']}, kernel σ={num(sigma)})")
        ax.set_xlabel("Hessian eigenvalue (loss / parameter²)")
        ax.set_ylabel("density (per unit eigenvalue), log scale")
    return fig


def plot_grad_norms(metrics: Sequence[dict[str, Any]], curvature: Sequence[dict[str, Any]] | None = None) -> Figure:
    """Global gradient norm per epoch (metrics.csv) and, when recorded, per measurement step on the
    fixed examples (curvature.csv), one line per input transform: median and min..max over seeds."""
    sources = [(metrics, "epoch", "epoch", "per epoch (metrics.csv)")]
    if curvature:
        sources.append((curvature, "step", "optimiser step", "at measurement steps (curvature.csv)"))
    keys = ordered_keys(series_key(r) for rows, *_ in sources for r in rows)
    colors = colors_for(keys)
    fig, axes = new_figure(len(sources), "Gradient norm by input transform (line: median over seeds; band: min..max)")
    for ax, (rows, x_field, xlabel, where) in zip(axes, sources, strict=True):
        per_key = bands(rows, x_field, "grad_norm")
        for key in keys:
            if key in per_key:
                draw_band(ax, positive(per_key[key]), series_label(key, keys), colors[key], marker=".")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("||∇loss||₂ (loss / parameter), log scale")
        ax.set_title(f"Gradient norm {where}")
        legend(ax, "small")
    return fig


# ---------------------------------------------------------------------------- assembling and saving


def build_figures(data: RunData) -> dict[str, Figure]:
    """Every figure the run's files allow, by file stem; the curvature ones need curvature.csv/spectrum.json."""
    loss_name = str(data.config.get("train", {}).get("loss", "loss"))
    figures = {
        "loss_curves": plot_loss_curves(data.metrics, loss_name),
        "final_vs_divisor": plot_final_vs_divisor(data.metrics, loss_name),
    }
    if data.curvature:
        if step0_rows(data.curvature):
            figures["init_diagnostics"] = plot_init_diagnostics(data.curvature)
        figures["sharpness"] = plot_sharpness(data.curvature)
    if data.spectrum and data.spectrum.get("models"):
        figures["spectral_density"] = plot_spectra(data.spectrum)
    figures["grad_norms"] = plot_grad_norms(data.metrics, data.curvature)
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
