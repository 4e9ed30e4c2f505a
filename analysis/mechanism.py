"""The accepted answer's mechanism, measured: do the first layer's hyperplanes cut the data cloud?

    python -m analysis.mechanism RUN_DIR      # writes RUN_DIR/hyperplanes.csv and prints it

For every model of a run, from its saved initial parameters (``params/epoch_000.npz``) and the
run's own first ``curvature.examples`` training examples under the model's input transform (as the
run transformed them: ``transforms.fit_affine`` on its training split): the first layer's
pre-activations ``z = x' W + b`` and ``scalelab.probes.hyperplanes`` of them: the share of units
whose hyperplane cuts the cloud (``z`` takes both signs) and the median over units of the
hyperplane's distance from the centroid in units of the cloud's spread along its normal.
``analysis.report`` reads ``hyperplanes.csv`` (and writes it first when the run saved params).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

from analysis.plots import INPUTS, run_dir_command
from scalelab.errors import ScalelabError
from scalelab.results import RunDir, atomic_write_text, rows_csv

PROG = "analysis.mechanism"
FILE = "hyperplanes.csv"
FIELDS = ("cut_frac", "distance_median", "distance_q90", "examples")


def layer_stats(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> dict[str, float]:
    """cut share, median and 90th percentile of the centroid distances of one layer on ``x``."""
    from scalelab.probes import hyperplanes

    h = hyperplanes(np.asarray(x, np.float32) @ kernel + bias)
    distance = np.asarray(h.distance, np.float64)
    return {
        "cut_frac": float(h.cut_frac),
        "distance_median": float(np.median(distance)),
        "distance_q90": float(np.quantile(distance, 0.9)),
        "examples": int(len(x)),
    }


def transformed_examples(config, train_x: np.ndarray, inputs: str) -> np.ndarray:
    """The run's first ``curvature.examples`` training examples under ``inputs``, as the run saw them."""
    from scalelab.transforms import fit_affine, parse_transform

    constants = fit_affine(parse_transform(inputs), train_x)
    count = min(config.curvature.examples, len(train_x))
    x = np.asarray(train_x[:count], np.float32).reshape(count, -1)
    return (x - constants.shift) * constants.scale


def measure_run(run_dir: Path) -> list[dict[str, Any]] | None:
    """One row per model (its identity columns, then ``FIELDS``); None without params/epoch_000.npz."""
    from scalelab.data import load_dataset
    from scalelab.planning import prepare_arrays
    from scalelab.schema import study_models

    run = RunDir.open(run_dir)
    if not run.params_path(0).exists():
        return None
    config = run.config()
    train_x = np.asarray(prepare_arrays(load_dataset(config.data.name, config.data.data_dir), config)[0])
    cache: dict[str, np.ndarray] = {}
    rows = []
    for model in study_models(config):
        inputs = model[INPUTS]
        if inputs not in cache:
            cache[inputs] = transformed_examples(config, train_x, inputs)
        first = run.load_params(0, model.index)["params"]["Dense_0"]
        rows.append({**model.columns, **layer_stats(cache[inputs], first["kernel"], first["bias"])})
    return rows


def write(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(run_dir) / FILE
    atomic_write_text(path, rows_csv(rows, list(rows[0])))
    return path


def read(run_dir: Path) -> dict[int, dict[str, float]] | None:
    """hyperplanes.csv as {model: {field: value}}, None if the run has none."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return {int(row["model"]): {k: float(row[k]) for k in FIELDS} for row in csv.DictReader(f)}


def ensure(run_dir: Path) -> dict[int, dict[str, float]] | None:
    """hyperplanes.csv's numbers by model, measured and written first when the run has none yet;
    None when they cannot be measured (no saved init params, damaged params, data not found): the
    report then says so instead of failing."""
    try:
        if read(run_dir) is None:
            rows = measure_run(run_dir)
            if rows:
                write(run_dir, rows)
        return read(run_dir)
    except (ScalelabError, KeyError, ValueError):
        return None


def write_file(run_dir: Path) -> list[Path]:
    rows = measure_run(run_dir)
    if not rows:
        raise ScalelabError(f"{run_dir} saved no params/epoch_000.npz (it ran with --no-save-params)")
    return [write(run_dir, rows)]


main = run_dir_command(PROG, __doc__.split("\n\n")[0], write_file)

if __name__ == "__main__":
    sys.exit(main())
