"""The host loop around the compiled grid: chunks, epochs, checkpoints, progress, rows.

The compiled ``grid.train_epoch`` does all the arithmetic; this module only moves its outputs
to rows and files. Chunks run one after another (each to its last epoch), and after every epoch
the chunk's whole state and every row so far are checkpointed atomically, so a killed run
resumes bit-identically from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import numpy as np

from scalelab import grid as grid_lib
from scalelab import measure, sharding
from scalelab.config import RunConfig, config_differences
from scalelab.errors import ScalelabError, UsageError
from scalelab.losses import get_loss
from scalelab.models import count_params, make_model
from scalelab.optim import make_direction
from scalelab.results import RunDir
from scalelab.train import Hypers
from scalelab.transforms import fit_affine, parse_transform


@dataclass(frozen=True)
class ModelId:
    """One model of the grid: its flat index and the grid coordinates it was trained at."""

    index: int
    seed: int
    inputs: str
    lr: float


@dataclass(frozen=True)
class GridPlan:
    """A config resolved against its data: the compiled program, the axes and the constants."""

    config: RunConfig
    program: grid_lib.Program
    seeds: tuple[int, ...]
    variants: tuple[tuple[str, float], ...]  # (input transform name, lr), the V axis
    hypers: Hypers  # numpy, leading axis V
    data: grid_lib.DeviceData  # numpy; put on the device by the caller

    @property
    def models(self) -> list[ModelId]:
        return [
            ModelId(s * len(self.variants) + v, seed, name, lr)
            for s, seed in enumerate(self.seeds)
            for v, (name, lr) in enumerate(self.variants)
        ]


def prepare_arrays(dataset, config: RunConfig):
    """Flattens and limits the dataset: (train_x, train_y, test_x, test_y) as uint8/int32."""
    train_x = dataset.train_images.reshape(len(dataset.train_images), -1)
    test_x = dataset.test_images.reshape(len(dataset.test_images), -1)
    train_y = dataset.train_labels.astype(np.int32)
    test_y = dataset.test_labels.astype(np.int32)
    limit, test_limit = config.data.train_limit, config.data.test_limit
    for name, value, available in (("--train-limit", limit, len(train_x)), ("--test-limit", test_limit, len(test_x))):
        if value is not None and not 0 < value <= available:
            raise UsageError(f"{name} {value} must be between 1 and {available} (the split's size)")
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    if test_limit is not None:
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
    if config.train.batch_size > len(train_x):
        raise UsageError(
            f"--batch-size {config.train.batch_size} is larger than the {len(train_x)} training "
            "examples; lower it or raise --train-limit"
        )
    return train_x, train_y, test_x, test_y


def plan_grid(config: RunConfig, dataset, models_per_block: int | None = None) -> GridPlan:
    """Everything a run needs before touching the device; ``models_per_block`` None: automatic."""
    train_x, train_y, test_x, test_y = prepare_arrays(dataset, config)
    transforms = [parse_transform(name) for name in config.grid.inputs]
    constants = [fit_affine(t, train_x) for t in transforms]
    variants = tuple((t.name, float(lr)) for t in transforms for lr in config.grid.lrs)
    per_variant = [(c, lr) for c in constants for lr in config.grid.lrs]
    hypers = Hypers(
        shift=np.stack([c.shift for c, _ in per_variant]),
        scale=np.stack([c.scale for c, _ in per_variant]),
        lr=np.asarray([lr for _, lr in per_variant], np.float32),
    )
    model = make_model(config.model.hidden, dataset.num_classes, config.model.activation, config.model.init)
    program = grid_lib.Program(
        model=model,
        loss_fn=get_loss(config.train.loss),
        direction=make_direction(config.optimizer),
        batch_size=config.train.batch_size,
        patience=config.train.patience,
    )
    if models_per_block is None:
        models_per_block = auto_models_per_block(program, train_x.shape[1])
    program = dataclasses.replace(program, models_per_block=models_per_block)
    return GridPlan(
        config=config,
        program=program,
        seeds=tuple(range(config.grid.seeds)),
        variants=variants,
        hypers=hypers,
        data=grid_lib.DeviceData(train_x, train_y, test_x, test_y),
    )


def epoch_rows(plan: GridPlan, chunk, epoch: int, metrics: grid_lib.EpochMetrics) -> list[dict]:
    """Turns one chunk's (S_c, V_c) metrics into rows (epoch is 1-based, as Keras prints it)."""
    m = grid_lib.to_numpy(metrics)
    return [
        {
            "model": model.index, "seed": model.seed, "inputs": model.inputs, "lr": model.lr, "epoch": epoch + 1,
            "train_loss": float(m.train_loss[i, j]), "train_acc": float(m.train_acc[i, j]),
            "test_loss": float(m.test_loss[i, j]), "test_acc": float(m.test_acc[i, j]),
            "grad_norm": float(m.grad_norm[i, j]),
            "stopped": bool(m.stopped[i, j]), "diverged": bool(m.diverged[i, j]),
        }
        for i, j, model in chunk_models(plan, chunk)
    ]  # fmt: skip


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
        measure=jax.jit(measure.measure_grid, static_argnums=(0, 1, 2)),
        density=jax.jit(measure.density_grid, static_argnums=(0, 1)),
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


@dataclass
class ChunkRun:
    """One chunk of the grid on the device: its coordinates, keys and constants."""

    index: int
    coords: tuple[slice, slice]
    order_keys: jax.Array  # placed on the mesh, padded
    hypers: Hypers  # placed on the mesh, padded
    layout: sharding.GridLayout
    program: grid_lib.Program  # the plan's, on the chunk's mesh

    def host(self, tree):
        """A (padded, sharded) grid pytree as numpy arrays of the chunk's real (S_c, V_c) models."""
        return sharding.unpad(sharding.to_host(tree), self.layout)


def run_grid(
    config: RunConfig,
    dataset,
    run_dir: RunDir | None = None,
    *,
    resume: bool = False,
    max_models_per_chunk: int | None = None,
    models_per_block: int | None = None,
    on_epoch: Callable[[int, int, list[dict]], None] | None = None,
    save_params: bool = True,
    checkpoint_every: int = 1,
) -> tuple[GridPlan, list[dict[str, Any]]]:
    """Trains the whole grid and returns (plan, rows); writes ``run_dir`` as it goes if given.

    With ``config.curvature.enabled`` every model is also measured at init, every
    ``config.curvature.every`` steps and after each epoch (``curvature.csv``, ``spectrum.json``).
    Rows and the grid state are checkpointed every ``checkpoint_every`` epochs, after a chunk's
    last epoch and when a stop is requested. ``models_per_block``: see ``grid.train_steps``
    (None: ``auto_models_per_block``).
    """
    plan = plan_grid(config, dataset, models_per_block)
    chunks = grid_lib.split_chunks(len(plan.seeds), len(plan.variants), max_models_per_chunk or _auto_chunk(plan))
    rows: list[dict] = []
    curvature_rows: list[dict] = []
    start_chunk, start_epoch, restored = 0, 0, None
    if resume and run_dir is not None:
        start_chunk, start_epoch, restored, rows, curvature_rows = _restore(run_dir, config, chunks)
    fns = compile_programs()
    recorder = Recorder(plan, fns, run_dir) if config.curvature.enabled else None
    params_dir = run_dir if save_params and jax.process_index() == 0 else None
    epochs = config.train.epochs
    steps_per_epoch = plan.program.num_steps(plan.data.train_x.shape[0])
    every = config.curvature.every if recorder is not None else 0
    with StopRequested() as stop:
        for c in range(start_chunk, len(chunks)):
            seed_slice, variant_slice = chunks[c]
            seeds = plan.seeds[seed_slice]
            init_keys, order_keys = grid_lib.seed_keys(seeds)
            num_variants = len(plan.variants[variant_slice])
            state = sharding.to_host(fns.init(plan.program, init_keys, num_variants, plan.data.train_x.shape[1]))
            first_epoch = 0
            if c == start_chunk and restored is not None:
                state = jax.tree.unflatten(jax.tree.structure(state), restored)
                first_epoch = start_epoch
            # The chunk's models are spread over the devices (a (1, 1) mesh on one device), and
            # each device trains its own models (``grid.train_steps`` under ``shard_map``).
            layout, mesh = sharding.grid_placement(len(seeds), num_variants)
            hypers = jax.tree.map(lambda h, vs=variant_slice: h[vs], plan.hypers)
            state, hypers, data, order_keys = sharding.shard_grid(
                layout, mesh, state, hypers, plan.data, sharding.to_host(order_keys)
            )
            program = dataclasses.replace(plan.program, mesh=mesh)
            chunk = ChunkRun(c, chunks[c], order_keys, hypers, layout, program)
            if first_epoch == 0:
                if recorder is not None:
                    curvature_rows.extend(recorder.measure(chunk, state, 0, 0.0))
                    recorder.record_density(chunk, state)
                _save_params(params_dir, plan, chunk, state, 0)
            for epoch in range(first_epoch, epochs):
                if every:
                    state, metrics = _segmented_epoch(
                        plan, fns, recorder, chunk, state, data, epoch, steps_per_epoch, every, curvature_rows
                    )
                else:
                    state, metrics = fns.epoch(program, state, hypers, data, order_keys, np.int32(epoch))
                rows.extend(epoch_rows(plan, chunks[c], epoch, chunk.host(metrics)))
                if recorder is not None:
                    curvature_rows.extend(recorder.measure(chunk, state, (epoch + 1) * steps_per_epoch, epoch + 1.0))
                _save_params(params_dir, plan, chunk, state, epoch + 1)
                done = (c, epoch + 1) if epoch + 1 < epochs else (c + 1, 0)
                due = (epoch + 1) % checkpoint_every == 0 or done[1] == 0 or stop.requested
                if due and run_dir is not None and jax.process_index() == 0:  # one writer when several hosts
                    _checkpoint(run_dir, chunk.host(state), rows, curvature_rows, done, plan)
                if on_epoch is not None:
                    on_epoch(c, epoch, rows)
                if stop.requested and done != (len(chunks), 0):
                    if run_dir is not None:
                        run_dir.write_status("interrupted", chunk=done[0], epoch=done[1])
                    where = f"; resume with --resume {run_dir.path}" if run_dir is not None else ""
                    raise Interrupted(f"stopped after epoch {epoch + 1} of chunk {c + 1}/{len(chunks)}{where}")
    rows.sort(key=lambda r: (r["model"], r["epoch"]))
    return plan, rows


def _segmented_epoch(plan, fns, recorder, chunk, state, data, epoch, steps_per_epoch, every, curvature_rows):
    """An epoch as consecutive stretches of steps, measuring every model between them."""
    program, e = chunk.program, np.int32(epoch)
    orders, weights = fns.batches(program, chunk.order_keys, e, plan.data.train_x.shape[0])
    sums = grid_lib.zero_sums(state)
    for start, stop in segment_bounds(steps_per_epoch, every):
        state, sums = fns.steps(program, state, sums, chunk.hypers, data, orders[start:stop], weights[start:stop], e)
        if stop < steps_per_epoch:
            step = epoch * steps_per_epoch + stop
            curvature_rows.extend(recorder.measure(chunk, state, step, epoch + stop / steps_per_epoch))
    return fns.finish(program, state, sums, chunk.hypers, data, e)


class Recorder:
    """Measures a chunk's models (``measure.measure_grid``) and turns the numbers into rows."""

    def __init__(self, plan: GridPlan, fns: Compiled, run_dir: RunDir | None):
        self.plan, self.fns, self.run_dir = plan, fns, run_dir
        settings = plan.config.curvature
        self.batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, settings.examples)
        self.num_hidden = len(plan.config.model.hidden)

    def measure(self, chunk: ChunkRun, state, step: int, epoch: float) -> list[dict]:
        config = self.plan.config
        state, hypers = measuring_placement(chunk, (state, chunk.hypers))
        m = self.fns.measure(
            self.plan.program, config.curvature, config.optimizer, state, hypers, self.batch,
            measure.measurement_key(step),
        )  # fmt: skip
        m = chunk.host(m)
        status = chunk.host(state.status)
        rows = []
        for i, j, model in chunk_models(self.plan, chunk.coords):
            reason = measure.skip_reason(bool(status.diverged[i, j]), int(status.diverge_epoch[i, j]))
            numbers = measure.model_numbers(jax.tree.map(lambda x, i=i, j=j: x[i, j], m), self.num_hidden)
            if reason:
                numbers = dict.fromkeys(numbers, float("nan"))
            rows.append({
                "model": model.index, "seed": model.seed, "inputs": model.inputs, "lr": model.lr,
                "epoch": float(epoch), "step": int(step), "skipped": reason,
                **numbers, **measure.thresholds(config.optimizer, model.lr),
            })  # fmt: skip
        return rows

    def record_density(self, chunk: ChunkRun, state) -> None:
        if self.run_dir is None or jax.process_index() != 0 or self.plan.config.curvature.density_probes < 1:
            return
        state, hypers = measuring_placement(chunk, (state, chunk.hypers))
        nodes, weights = chunk.host(
            self.fns.density(
                self.plan.program, self.plan.config.curvature, state, hypers, self.batch, measure.measurement_key(0)
            )
        )
        entries = [
            {"model": model.index, "seed": model.seed, "inputs": model.inputs, "lr": model.lr,
             "nodes": nodes[i, j].tolist(), "weights": weights[i, j].tolist()}
            for i, j, model in chunk_models(self.plan, chunk.coords)
        ]  # fmt: skip
        self.run_dir.add_spectrum(entries)


def measuring_placement(chunk: ChunkRun, tree):
    """``tree`` where the chunk's curvature is measured: on its devices, unless they are several CPUs.

    Then everything moves to the first of them. jaxlib's CPU ``eigh`` (LAPACK syevd, batched
    over models) waits for pieces of its batch that it queues on the intra-op thread pool, which
    all host devices share; two devices inside ``eigh`` at once can each hold a pool thread
    waiting for work queued behind the other, and hang (reproduced with 2 host devices and a
    batch of 64x64 matrices). One CPU device still measures on every core.
    """
    devices = chunk.program.mesh.devices.flat
    if len(devices) == 1 or devices[0].platform != "cpu" or jax.process_count() > 1:
        return tree
    return jax.device_put(tree, devices[0])


def chunk_models(plan: GridPlan, coords: tuple[slice, slice]):
    """(i, j, ModelId) for a chunk's models, (i, j) their place in the chunk's (S_c, V_c) axes."""
    seed_slice, variant_slice = coords
    num_variants = len(plan.variants)
    models = plan.models
    for i, s in enumerate(range(len(plan.seeds))[seed_slice]):
        for j, v in enumerate(range(num_variants)[variant_slice]):
            yield i, j, models[s * num_variants + v]


def _save_params(run_dir: RunDir | None, plan: GridPlan, chunk: ChunkRun, state, epoch: int) -> None:
    """Every model's params after ``epoch`` (0 = init) into ``params/epoch_EEE.npz``."""
    if run_dir is None:
        return
    params = chunk.host(state.params)
    models = chunk_models(plan, chunk.coords)
    per_model = {m.index: jax.tree.map(lambda x, i=i, j=j: x[i, j], params) for i, j, m in models}
    run_dir.save_params(epoch, per_model)


def _checkpoint(run_dir: RunDir, state, rows: list[dict], curvature_rows: list[dict], done, plan: GridPlan) -> None:
    # Rows first, then the checkpoint: if killed in between, resume redoes that epoch and
    # rewrites the same rows bit for bit.
    run_dir.write_metrics(sorted(rows, key=lambda r: (r["model"], r["epoch"])))
    if curvature_rows:
        columns = measure.curvature_columns(len(plan.config.model.hidden), plan.config.curvature.top_k)
        run_dir.write_curvature(sorted(curvature_rows, key=lambda r: (r["model"], r["step"])), columns)
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    meta = {"chunk": done[0], "epoch": done[1], "rows": rows, "curvature_rows": curvature_rows, "time": time.time()}
    run_dir.save_checkpoint(leaves, meta)


def check_resumable(run_dir: RunDir, config: RunConfig) -> None:
    """Refuses to continue a run with another config, naming every differing field."""
    differences = config_differences(run_dir.config(), config)
    if differences:
        raise UsageError(
            f"--resume {run_dir.path}: the command line differs from the run's config.json in "
            f"{', '.join(differences)}; repeat the original flags or start a new --out"
        )


def _restore(run_dir: RunDir, config: RunConfig, chunks):
    check_resumable(run_dir, config)
    loaded = run_dir.load_checkpoint()
    if loaded is None:
        return 0, 0, None, [], []
    leaves, meta = loaded
    chunk, epoch, rows = meta["chunk"], meta["epoch"], meta["rows"]
    curvature_rows = meta.get("curvature_rows", [])
    if epoch == 0:  # the saved chunk finished: the next one starts fresh
        return chunk, 0, None, rows, curvature_rows
    return chunk, epoch, leaves, rows, curvature_rows


# What the models stepped together touch at every step (parameters, gradients, two optimiser
# moments, the minibatch and its activations) should stay in the CPU's last-level cache from one
# step to the next. On the 2-core EPYC this was tuned on (32 MiB L3, shared) blocks of ~4 MiB were
# fastest (experiments.bench --models-per-block): 2 default MLPs at batch 32, 1 at batch 256.
CPU_BLOCK_BYTES = 4 * 2**20


def auto_models_per_block(program: grid_lib.Program, input_dim: int) -> int:
    """Models per block on each CPU device; 0 (all at once) on accelerators.

    Blocks are a CPU cache optimisation (each device steps its own share of the grid block by
    block, ``grid.train_steps``). On a GPU every model of the grid runs in parallel.
    """
    if jax.devices()[0].platform != "cpu":
        return 0
    state = 4 * count_params(program.model, input_dim) * 4  # float32 params, grads, two moments
    widths = (*program.model.hidden, program.model.num_classes)
    activations = program.batch_size * (2 * input_dim + 3 * sum(widths)) * 4  # raw + transformed batch, z, a, dz
    return max(1, CPU_BLOCK_BYTES // (state + activations))


def _auto_chunk(plan: GridPlan) -> int:
    """How many models fit in half the device's memory (all of them, on most machines)."""
    num_params = count_params(plan.program.model, plan.data.train_x.shape[1])
    per_model = grid_lib.estimate_bytes_per_model(
        num_params, plan.config.model.hidden, plan.program.batch_size, plan.program.eval_chunk
    )
    return max(1, int(0.5 * _device_memory_bytes() // per_model))


def _device_memory_bytes() -> int:
    """Memory the grid may use: every accelerator's limit (the models are sharded), else the RAM."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) * jax.device_count()
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
