"""Studies: the one way a grid is trained (``run``) and a run directory is read (``load``).

    from scalelab import study
    from scalelab.config import GridConfig, RunConfig, TrainConfig

    config = RunConfig(grid=GridConfig(inputs=("/1", "/255"), seeds=2), train=TrainConfig(epochs=1))
    run = study.run(config, "runs/mine")
    finals = [r for r in run.metrics() if r["epoch"] == 1]

``experiments.scale_grid`` and every other experiment, the benchmark and the tests train through
``run``; ``scalelab.load`` opens a finished or interrupted run with typed access to its config,
axes, metrics, curvature rows, summary, params and status.
"""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalelab.checkpointing import START, check_resumable, record_extension, restore, verify_chunk_states
from scalelab.config import RunConfig
from scalelab.errors import ScalelabError
from scalelab.locking import RunLock
from scalelab.results import RunDir
from scalelab.schema import (
    Axis,
    ModelId,
    axis_names,
    final_rows,
    grid_axes,
    metric_columns,
    static_axes,
    study_models,
    summarize,
)


@dataclass(frozen=True)
class Run:
    """A run directory, read on demand (nothing is cached: an unfinished run may still grow)."""

    path: Path

    @property
    def dir(self) -> RunDir:
        return RunDir.open(self.path)

    @property
    def config(self) -> RunConfig:
        return self.dir.config()

    @property
    def axes(self) -> tuple[Axis, ...]:
        return grid_axes(self.config)

    @property
    def models(self) -> list[ModelId]:
        return study_models(self.config)

    @property
    def status(self) -> dict[str, Any]:
        """``{'state': 'running' | 'interrupted' | 'complete' | 'unknown', ...}``."""
        return self.dir.status()

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.csv: one row per model per epoch, every axis a column."""
        return self.dir.metrics()

    def curvature(self) -> list[dict[str, Any]]:
        """curvature.csv: one row per model per measurement."""
        return self.dir.curvature()

    def summary(self) -> dict[str, Any]:
        """summary.json (written when the run completes): final rows and per-setting statistics."""
        return self.dir.summary()

    def params(self, epoch: int, model: int) -> dict[str, Any]:
        """One model's Flax params after ``epoch`` (0 = init)."""
        return self.dir.load_params(epoch, model)

    def to_pandas(self):
        """metrics.csv as a tidy ``pandas.DataFrame``: one row per model per epoch, every axis a column."""
        pd = optional("pandas")
        return pd.DataFrame(self.metrics(), columns=metric_columns(self.axes))

    def to_xarray(self):
        """The metrics as an ``xarray.Dataset`` with one dimension per axis and ``epoch``.

        A model's values after the epoch it stopped or diverged in are NaN (its parameters are
        frozen from then on), so a mean over seeds at an epoch is over the models still training.
        """
        optional("xarray")
        frame = self.to_pandas()
        ends = {r["model"]: r["epoch"] for r in final_rows(frame.to_dict("records"))}
        after_end = frame["epoch"] > frame["model"].map(ends)
        fields = [c for c in frame.columns if c not in ("model", "epoch", *axis_names(self.axes))]
        frame[fields] = frame[fields].astype(float).mask(after_end)
        return frame.set_index([*axis_names(self.axes), "epoch"]).to_xarray()


def optional(module: str):
    """An optional dependency (the ``analysis`` extra), or a one-line error naming how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScalelabError(f"{module} is not installed; pip install -e '.[analysis]' (pandas and xarray)") from None


def load(path: str | Path) -> Run:
    """Opens a run directory written by ``run`` (checked now: it must hold a readable config.json)."""
    run = Run(Path(path))
    run.dir.config()
    return run


def run(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    dataset=None,
    name: str = "study",
) -> Run:
    """Trains ``config``'s grid into ``out`` (default ``runs/NAME-TIMESTAMP``) and returns the run.

    ``resume=True`` continues the run at ``out`` from its last checkpoint (``config`` must equal
    the run's own, but for the engine and output fields). ``dataset``: an already loaded
    ``scalelab.data.Dataset`` (default: ``config.data`` is loaded). Everything is checked before
    the run directory is created, so a bad config leaves nothing behind; while it trains, the run
    directory is locked against a second writer (``scalelab.locking``). The summary and, with
    ``config.output.report``, the report are written at the end.
    """
    from scalelab import compile_cache, runner
    from scalelab.data import load_dataset
    from scalelab.progress import EpochProgress
    from scalelab.sharding import maybe_initialize_distributed, use_host_cores

    maybe_initialize_distributed()  # a no-op unless a multi-host launch is configured (README)
    use_host_cores()  # on a CPU, one device per core: large grids are split among them (README, Speed)
    if config.engine.compile_cache:  # before the first compile: a repeated study loads its programs
        compile_cache.enable()
    if resume and out is None:
        raise ScalelabError("resume=True needs the run directory to continue (out)")
    if dataset is None:
        dataset = load_dataset(config.data.name, config.data.data_dir)
    plan = runner.plan_study(config, dataset)  # every remaining check, before a run directory exists
    target = Path(out) if out is not None else default_out(name)
    run_dir = RunDir.open(target) if resume else RunDir.create(target, config)
    with writer_lock(run_dir) as lock:
        position = START
        if resume:  # every check, and reading the checkpoint, before anything is written
            check_resumable(run_dir, config)
            position = restore(run_dir)
            runner.check_position(plan, position)
            verify_chunk_states(run_dir)
            if config.train.epochs > run_dir.config().train.epochs:  # --resume RUN --epochs N: train on
                record_extension(run_dir, config)
        if lock is not None:
            lock.announce()
        for warning in run_dir.warnings:
            print(warning, file=sys.stderr)
        print(f"{name}: {describe(config)} -> {run_dir.path}", file=sys.stderr)
        with EpochProgress(enabled=progress) as bar:
            rows = runner.train_plan(plan, run_dir, resume=resume, position=position, on_epoch=bar)
        run_dir.write_summary(summarize(rows, plan.axes))
        run_dir.write_status("complete", epochs=max(single.train.epochs for _, single in config.programs()))
        if config.output.report:
            from analysis import report

            report.write_report(run_dir.path)
    return Run(run_dir.path)


def writer_lock(run_dir: RunDir) -> AbstractContextManager[RunLock | None]:
    """The run directory's lock (``locking.RunLock``) in process 0; the other hosts write nothing."""
    import jax

    return RunLock(run_dir.path) if jax.process_index() == 0 else nullcontext()


def default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def describe(config: RunConfig) -> str:
    """One line: the grid's size and axes, the network and how it trains."""
    numeric = " x ".join(f"{len(values)} {name}" for name, values in config.numeric_axes())
    if config.grid.programs:
        axes = ", ".join(f"{a.name} {'/'.join(map(str, a.values))}" for a in static_axes(config))
        return (
            f"{config.num_models} models ({len(config.grid.programs)} programs: {axes}; each up to "
            f"{len(config.seed_values)} seeds x {numeric}), {config.train.epochs} epochs"
        )
    hidden = "-".join(str(w) for w in config.model.hidden)
    return (
        f"{config.num_models} models ({config.grid.seeds} seeds x {numeric}), MLP {hidden} "
        f"{config.model.activation}, {config.train.loss}, "
        f"{config.optimizer.name}, batch {config.train.batch_size}, {config.train.epochs} epochs"
    )
