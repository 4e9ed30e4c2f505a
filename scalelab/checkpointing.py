"""Checkpoints: the rows so far and a chunk's whole grid state, written atomically after epochs.

The rows are written first, then the checkpoint: if a run is killed in between, resume redoes
that epoch and rewrites the same rows bit for bit. ``restore`` reads the position back.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import numpy as np

from scalelab import measure
from scalelab.config import RunConfig
from scalelab.errors import UsageError
from scalelab.planning import GridPlan
from scalelab.results import RunDir


class Progress(NamedTuple):
    """Where a run stands: the next chunk and epoch to train, with everything recorded before."""

    chunk: int
    epoch: int
    leaves: list[np.ndarray] | None  # the chunk's state after ``epoch`` epochs; None: start it fresh
    rows: list[dict[str, Any]]
    curvature_rows: list[dict[str, Any]]


START = Progress(0, 0, None, [], [])


def write_tables(run_dir: RunDir, plan: GridPlan, rows, curvature_rows) -> None:
    run_dir.write_metrics(sorted(rows, key=lambda r: (r["model"], r["epoch"])), plan.axes)
    if curvature_rows:
        columns = measure.curvature_columns(plan.axes, len(plan.config.model.hidden), plan.config.curvature.top_k)
        run_dir.write_curvature(sorted(curvature_rows, key=lambda r: (r["model"], r["step"])), columns)


def checkpoint(run_dir: RunDir, plan: GridPlan, state, done: tuple[int, int], rows, curvature_rows) -> None:
    """Tables, then the state of the chunk with ``done = (next chunk, next epoch)``."""
    write_tables(run_dir, plan, rows, curvature_rows)
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    meta = {"chunk": done[0], "epoch": done[1], "rows": rows, "curvature_rows": curvature_rows, "time": time.time()}
    run_dir.save_checkpoint(leaves, meta)


def check_resumable(run_dir: RunDir, config: RunConfig) -> None:
    """Refuses to continue a run with another config, naming every differing field."""
    differences = run_dir.config().differences(config)
    if differences:
        raise UsageError(
            f"--resume {run_dir.path}: the command line differs from the run's config.json in "
            f"{', '.join(differences)}; repeat the original flags or start a new --out"
        )


def restore(run_dir: RunDir) -> Progress:
    """The position of the run's last checkpoint (the start when it has none)."""
    loaded = run_dir.load_checkpoint()
    if loaded is None:
        return START
    leaves, meta = loaded
    rows, curvature_rows = meta["rows"], meta.get("curvature_rows", [])
    if meta["epoch"] == 0:  # the saved chunk finished: the next one starts fresh
        return Progress(meta["chunk"], 0, None, rows, curvature_rows)
    return Progress(meta["chunk"], meta["epoch"], leaves, rows, curvature_rows)
