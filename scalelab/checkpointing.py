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
from scalelab.errors import ScalelabError, UsageError
from scalelab.planning import Chunk, StudyPlan
from scalelab.results import RunDir


class Progress(NamedTuple):
    """Where a run stands: the next chunk and epoch to train, with everything recorded before."""

    chunk: int
    epoch: int
    leaves: list[np.ndarray] | None  # the chunk's state after ``epoch`` epochs; None: start it fresh
    rows: list[dict[str, Any]]
    curvature_rows: list[dict[str, Any]]
    chunks: list[Chunk] | None = None  # the run's chunk layout (None: plan it)


START = Progress(0, 0, None, [], [])


def encode_chunks(chunks: list[Chunk]) -> list[list[int]]:
    return [[g, s.start, s.stop, v.start, v.stop] for g, s, v in chunks]


def decode_chunks(raw) -> list[Chunk] | None:
    """The saved chunk layout; entries of four numbers (before static axes) are program 0's."""
    if raw is None:
        return None
    return [(g, slice(a, b), slice(c, d)) for g, a, b, c, d in ([0, *r] if len(r) == 4 else r for r in raw)]


def write_tables(run_dir: RunDir, plan: StudyPlan, rows, curvature_rows) -> None:
    run_dir.write_metrics(sorted(rows, key=lambda r: (r["model"], r["epoch"])), plan.axes)
    if curvature_rows:
        columns = measure.study_curvature_columns(plan.config)
        run_dir.write_curvature(sorted(curvature_rows, key=lambda r: (r["model"], r["step"])), columns)


def checkpoint(
    run_dir: RunDir, plan: StudyPlan, state, position: tuple[int, int], chunks, rows, curvature_rows
) -> None:
    """Tables, then the state of the chunk with ``position = (next chunk, next epoch)``."""
    write_tables(run_dir, plan, rows, curvature_rows)
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    meta = {"chunk": position[0], "epoch": position[1], "chunks": encode_chunks(chunks), "rows": rows,
            "curvature_rows": curvature_rows, "time": time.time()}  # fmt: skip
    run_dir.save_checkpoint(leaves, meta)


def check_resumable(run_dir: RunDir, config: RunConfig) -> None:
    """Refuses to continue a run with another config, naming every differing field.

    One difference is allowed: more epochs (``--resume RUN --epochs N``), which trains on.
    """
    old = run_dir.config()
    differences = old.differences(config)
    if differences == ["train.epochs"] and config.train.epochs > old.train.epochs:
        return
    if differences:
        fewer = config.train.epochs < old.train.epochs
        hint = f" (--epochs may only grow: the run has {old.train.epochs})" if fewer else ""
        raise UsageError(
            f"--resume {run_dir.path}: the command line differs from the run's config.json in "
            f"{', '.join(differences)}{hint}; repeat the original flags or start a new --out"
        )


def restore(run_dir: RunDir) -> Progress:
    """The position of the run's last checkpoint (the start when it has none)."""
    loaded = run_dir.load_checkpoint()
    if loaded is None:
        return START
    leaves, meta = loaded
    rows, curvature_rows, chunks = meta["rows"], meta.get("curvature_rows", []), decode_chunks(meta.get("chunks"))
    if meta["epoch"] == 0:  # the saved chunk finished: the next one starts fresh
        return Progress(meta["chunk"], 0, None, rows, curvature_rows, chunks)
    return Progress(meta["chunk"], meta["epoch"], leaves, rows, curvature_rows, chunks)


def chunk_start(run_dir: RunDir | None, progress: Progress, chunk: int) -> tuple[int, list[np.ndarray] | None]:
    """(first epoch, state leaves or None) of ``chunk`` on a run resumed at ``progress``.

    The checkpoint's own chunk continues from it; a chunk that finished earlier (its final state
    is in ``chunks/``) trains on from there when the run now has more epochs (``--resume --epochs
    N``), and is skipped otherwise; any other chunk starts fresh.
    """
    if chunk == progress.chunk and progress.leaves is not None:
        return progress.epoch, progress.leaves
    saved = run_dir.load_chunk_state(chunk) if run_dir is not None else None
    if saved is not None:
        leaves, meta = saved
        return int(meta["epochs"]), leaves
    if chunk < progress.chunk:
        assert run_dir is not None
        raise ScalelabError(
            f"{run_dir.chunk_state_path(chunk)} is missing: this run cannot train on; start a new --out"
        )
    return 0, None


def verify_chunk_states(run_dir: RunDir) -> None:
    """Reads every finished chunk's saved state, so a damaged one is reported before anything runs."""
    for path in sorted(run_dir.chunk_state_path(0).parent.glob("chunk_*.npz")):
        run_dir.load_chunk_state(int(path.stem.split("_")[1]))


def matching_leaves(leaves: list[np.ndarray], template, where: str) -> list[np.ndarray]:
    """``leaves`` if they fit the grid state ``template`` leaf for leaf (shape and dtype), else an error."""
    expected = jax.tree.leaves(template)  # arrays, or shapes and dtypes (jax.eval_shape)
    fits = len(leaves) == len(expected) and all(
        tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype for a, b in zip(leaves, expected, strict=False)
    )
    if not fits:
        raise ScalelabError(
            f"the saved state of {where} does not fit this run's grid; the checkpoint is damaged: delete "
            "checkpoint*.npz and chunks/ to restart the run from scratch"
        )
    return leaves


def record_extension(run_dir: RunDir, config: RunConfig) -> None:
    """config.json with the new epoch count and, under ``history``, the epochs trained before."""
    from scalelab.results import read_json, write_json

    raw = read_json(run_dir.config_path)
    history = [*raw.get("history", []), {"epochs": raw["train"]["epochs"], "extended_at": time.time()}]
    write_json(run_dir.config_path, {**config.to_dict(), "history": history})
