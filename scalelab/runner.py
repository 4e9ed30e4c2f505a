"""The host loop around the compiled grid: chunks, then epochs, each followed by its records.

The compiled ``grid.train_epoch`` does all the arithmetic; this module only sequences it. The
other jobs live beside it: planning (``scalelab.planning``), placement on the devices
(``sharding.grid_placement``), rows and measurements (``scalelab.recording``) and checkpoints
(``scalelab.checkpointing``). Chunks run one after another (each to its last epoch), and after
every epoch the chunk's whole state and every row so far are checkpointed atomically, so a
killed run resumes bit-identically from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from scalelab import checkpointing, measure, recording, sharding
from scalelab import grid as grid_lib
from scalelab.config import RunConfig
from scalelab.errors import ScalelabError
from scalelab.planning import StudyPlan, plan_chunks, plan_grid, plan_study
from scalelab.recording import ChunkRun
from scalelab.results import RunDir

__all__ = [
    "Interrupted",
    "StopRequested",
    "compile_programs",
    "plan_grid",
    "plan_study",
    "run_grid",
    "segment_bounds",
    "train_plan",
]

OnEpoch = Callable[[int, int, list[dict[str, Any]]], None]  # (chunk, epoch, rows so far)


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag checked between epochs, so nothing is lost mid-write."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the defaults alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(ScalelabError):
    exit_code = 130


class Compiled(NamedTuple):
    """The jitted programs of a run (compiled on first use, once per shape)."""

    init: Callable
    epoch: Callable
    batches: Callable
    steps: Callable
    finish: Callable
    measure: Callable
    density: Callable


def compile_programs() -> Compiled:
    return Compiled(
        init=jax.jit(grid_lib.init_grid, static_argnums=(0, 2, 3)),
        epoch=jax.jit(grid_lib.train_epoch, static_argnums=0, donate_argnums=1),
        batches=jax.jit(grid_lib.epoch_batches, static_argnums=(0, 3)),
        steps=jax.jit(grid_lib.train_steps, static_argnums=0, donate_argnums=(1, 2)),
        finish=jax.jit(grid_lib.finish_epoch, static_argnums=0),
        measure=jax.jit(measure.measure_grid, static_argnums=(0, 1, 2), static_argnames="block"),
        density=jax.jit(measure.density_grid, static_argnums=(0, 1), static_argnames="block"),
    )


def segment_bounds(steps_per_epoch: int, every: int) -> list[tuple[int, int]]:
    """The stretches of an epoch between measurements: every ``every`` steps, restarting each epoch.

    Aligning to the epoch keeps at most two stretch lengths (``every`` and the remainder), so at
    most two compiled step programs whatever the epoch count.
    """
    if every <= 0 or every >= steps_per_epoch:
        return [(0, steps_per_epoch)]
    starts = list(range(0, steps_per_epoch, every))
    return [(a, min(a + every, steps_per_epoch)) for a in starts]


def with_settings(config: RunConfig, **settings) -> RunConfig:
    """``config`` with engine/output fields given by keyword (a None value keeps the config's)."""
    owners = {f.name: name for name in ("engine", "output") for f in dataclasses.fields(getattr(config, name))}
    unknown = sorted(set(settings) - set(owners))
    if unknown:
        raise TypeError(f"unknown run settings {unknown}; known: {sorted(owners)}")
    changes: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        if value is not None:
            changes.setdefault(owners[key], {})[key] = value
    sections = {name: dataclasses.replace(getattr(config, name), **values) for name, values in changes.items()}
    return dataclasses.replace(config, **sections) if sections else config


def run_grid(
    config: RunConfig,
    dataset,
    run_dir: RunDir | None = None,
    *,
    resume: bool = False,
    on_epoch: OnEpoch | None = None,
    **settings,
) -> tuple[StudyPlan, list[dict[str, Any]]]:
    """Trains the whole study and returns (plan, rows); writes ``run_dir`` as it goes if given.

    ``settings`` override ``config.engine`` and ``config.output`` by field name
    (``max_models_per_chunk``, ``models_per_block``, ``save_params``, ``checkpoint_every``).
    """
    plan = plan_study(with_settings(config, **settings), dataset)
    return plan, train_plan(plan, run_dir, resume=resume, on_epoch=on_epoch)


def check_position(plan: StudyPlan, progress: checkpointing.Progress) -> None:
    """Refuses a resumed state that does not fit its chunk (leaf for leaf), before anything runs."""
    if progress.leaves is None:
        return
    chunks = progress.chunks or plan_chunks(plan)
    if not 0 <= progress.chunk < len(chunks) or not 0 <= chunks[progress.chunk][0] < len(plan.grids):
        raise ScalelabError("the checkpoint's position is outside this run's chunks; the checkpoint is damaged")
    g, seed_slice, variant_slice = chunks[progress.chunk]
    grid = plan.grids[g]
    num_seeds, num_variants = len(grid.seeds[seed_slice]), len(range(grid.num_variants)[variant_slice])
    keys = jax.ShapeDtypeStruct((num_seeds, 2), np.uint32)
    template = jax.eval_shape(
        lambda k: grid_lib.init_grid(grid.program, k, num_variants, grid.data.train_x.shape[1]), keys
    )
    checkpointing.matching_leaves(progress.leaves, template, f"chunk {progress.chunk}")


def train_plan(
    plan: StudyPlan,
    run_dir: RunDir | None = None,
    *,
    resume: bool = False,
    position: checkpointing.Progress | None = None,
    on_epoch: OnEpoch | None = None,
) -> list[dict[str, Any]]:
    """Trains a planned study chunk by chunk (program by program); returns every metrics row,
    sorted by model and epoch.

    With ``plan.config.curvature.enabled`` every model is also measured at init, every
    ``curvature.every`` steps and after each epoch (``curvature.csv``, ``spectrum.json``).
    ``on_epoch(done, total, rows)`` is called after every epoch of every chunk (``done`` of
    ``total`` chunk-epochs, counting those of a resumed run's earlier processes). ``position``: the
    resumed run's checkpoint, when the caller has read it already.
    """
    progress = position or checkpointing.START
    if resume and run_dir is not None and position is None:
        checkpointing.check_resumable(run_dir, plan.config)
        progress = checkpointing.restore(run_dir)
        check_position(plan, progress)
        for warning in run_dir.warnings:
            print(warning, file=sys.stderr)
    loop = GridLoop(plan, run_dir, on_epoch, progress.chunks)
    loop.rows, loop.curvature_rows = list(progress.rows), list(progress.curvature_rows)
    with StopRequested() as loop.stop:
        for c in range(len(loop.chunks)):
            first_epoch, leaves = checkpointing.chunk_start(run_dir, progress, c)
            if first_epoch < loop.epochs(c):
                loop.train_chunk(c, first_epoch, leaves)
    return sorted(loop.rows, key=lambda r: (r["model"], r["epoch"]))


class GridLoop:
    """The chunk and epoch loop of one run, with the rows it has recorded so far."""

    def __init__(self, plan: StudyPlan, run_dir: RunDir | None, on_epoch: OnEpoch | None, chunks=None):
        self.plan, self.run_dir, self.on_epoch = plan, run_dir, on_epoch
        self.chunks = chunks or plan_chunks(plan)  # a resumed run keeps its own layout
        self.fns = compile_programs()
        enabled = plan.config.curvature.enabled
        self.recorders = [
            recording.Recorder(grid, self.fns.measure, self.fns.density, run_dir) if enabled else None
            for grid in plan.grids
        ]
        self.writer = run_dir if run_dir is not None and jax.process_index() == 0 else None  # one writer
        self.params_dir = self.writer if plan.config.output.save_params else None
        self.rows: list[dict[str, Any]] = []
        self.curvature_rows: list[dict[str, Any]] = []
        self.stop = StopRequested()

    def epochs(self, c: int) -> int:
        """Chunk ``c``'s epochs: its program's (epochs may be a static axis)."""
        return self.plan.grids[self.chunks[c][0]].config.train.epochs

    def progress(self, c: int, epoch: int) -> tuple[int, int]:
        """(chunk-epochs done after ``epoch`` of chunk ``c``, all of the run's chunk-epochs)."""
        before = sum(self.epochs(b) for b in range(c))
        return before + epoch + 1, sum(self.epochs(b) for b in range(len(self.chunks)))

    def place_chunk(self, c: int, leaves: list[np.ndarray] | None):
        """The chunk's initial (or restored) state, spread over its devices: (chunk, state, data)."""
        g, seed_slice, variant_slice = self.chunks[c]
        plan = self.plan.grids[g]
        seeds = plan.seeds[seed_slice]
        init_keys, order_keys = grid_lib.seed_keys(seeds)
        num_variants = len(range(plan.num_variants)[variant_slice])
        state = sharding.to_host(self.fns.init(plan.program, init_keys, num_variants, plan.data.train_x.shape[1]))
        if leaves is not None:
            leaves = checkpointing.matching_leaves(leaves, state, f"chunk {c}")
            state = jax.tree.unflatten(jax.tree.structure(state), leaves)
        elif plan.config.grid.init_scales != (1.0,):
            first = plan.config.grid.init_scale_layers == "first"
            state = grid_lib.scale_initial_kernels(state, plan.init_scales[variant_slice], first_only=first)
        # The chunk's models are spread over the devices (a (1, 1) mesh on one device), and
        # each device trains its own models (``grid.train_steps`` under ``shard_map``).
        layout, mesh = sharding.grid_placement(len(seeds), num_variants)
        hypers = jax.tree.map(lambda h: h[variant_slice], plan.hypers)
        state, hypers, data, order_keys = sharding.shard_grid(
            layout, mesh, state, hypers, plan.data, sharding.to_host(order_keys)
        )
        program = dataclasses.replace(plan.program, mesh=mesh)
        return ChunkRun(c, (seed_slice, variant_slice), order_keys, hypers, layout, program, plan), state, data

    def train_chunk(self, c: int, first_epoch: int, leaves: list[np.ndarray] | None) -> None:
        """Epochs ``first_epoch`` ... of chunk ``c``, from ``leaves`` (None: its initial state)."""
        chunk, state, data = self.place_chunk(c, leaves)
        recorder = self.recorders[self.chunks[c][0]]
        if first_epoch == 0:
            if recorder is not None:
                self.curvature_rows.extend(recorder.measure(chunk, state, 0, 0.0))
                recorder.record_density(chunk, state)
            recording.save_params(self.params_dir, chunk.plan, chunk, state, 0)
        for epoch in range(first_epoch, self.epochs(c)):
            state = self.train_epoch(chunk, recorder, state, data, epoch)
            self.after_epoch(chunk, state, epoch)

    def train_epoch(self, chunk: ChunkRun, recorder: recording.Recorder | None, state, data, epoch: int):
        """One epoch of the chunk, measured part-way if the run asks; records its metrics rows."""
        every = self.plan.config.curvature.every if recorder is not None else 0
        if recorder is not None and every:
            state, metrics = self.segmented_epoch(chunk, recorder, state, data, epoch, every)
        else:
            state, metrics = self.fns.epoch(chunk.program, state, chunk.hypers, data, chunk.order_keys, np.int32(epoch))
        self.rows.extend(recording.epoch_rows(chunk.plan, chunk.coords, epoch, chunk.host(metrics)))
        if recorder is not None:
            step = (epoch + 1) * chunk.plan.steps_per_epoch
            self.curvature_rows.extend(recorder.measure(chunk, state, step, epoch + 1.0))
        return state

    def segmented_epoch(self, chunk: ChunkRun, recorder: recording.Recorder, state, data, epoch: int, every: int):
        """An epoch as consecutive stretches of steps, measuring every model between them."""
        fns, program, e = self.fns, chunk.program, np.int32(epoch)
        steps_per_epoch = chunk.plan.steps_per_epoch
        orders, weights = fns.batches(program, chunk.order_keys, e, chunk.plan.data.train_x.shape[0])
        sums = grid_lib.zero_sums(state)
        for start, stop in segment_bounds(steps_per_epoch, every):
            state, sums = fns.steps(
                program, state, sums, chunk.hypers, data, orders[start:stop], weights[start:stop], e
            )
            if stop < steps_per_epoch:
                step = epoch * steps_per_epoch + stop
                self.curvature_rows.extend(recorder.measure(chunk, state, step, epoch + stop / steps_per_epoch))
        return fns.finish(program, state, sums, chunk.hypers, data, e)

    def after_epoch(self, chunk: ChunkRun, state, epoch: int) -> None:
        """Params, the checkpoint when due, the progress callback, and a requested stop."""
        c = chunk.index
        epochs = self.epochs(c)
        recording.save_params(self.params_dir, chunk.plan, chunk, state, epoch + 1)
        done = (c, epoch + 1) if epoch + 1 < epochs else (c + 1, 0)
        due = (epoch + 1) % self.plan.config.output.checkpoint_every == 0 or done[1] == 0 or self.stop.requested
        if due and self.writer is not None:
            host = chunk.host(state)
            if done[1] == 0:  # the chunk's final state, for --resume --epochs N later
                self.writer.save_chunk_state(c, [np.asarray(x) for x in jax.tree.leaves(host)], epochs)
            checkpointing.checkpoint(self.writer, self.plan, host, done, self.chunks, self.rows, self.curvature_rows)
        if self.on_epoch is not None:
            self.on_epoch(*self.progress(c, epoch), self.rows)
        if self.stop.requested and done != (len(self.chunks), 0):
            if self.run_dir is not None:
                self.run_dir.write_status("interrupted", chunk=done[0], epoch=done[1])
            where = f"; resume with --resume {self.run_dir.path}" if self.run_dir is not None else ""
            raise Interrupted(f"stopped after epoch {epoch + 1} of chunk {c + 1}/{len(self.chunks)}{where}")
