"""The benchmarked grids and their timing: the only code that touches the grid engine's interface.

A grid of M models is S seeds x V learning rates of the default study (``run_config``), planned by
``runner.plan_grid`` and placed by ``sharding.grid_placement`` exactly as ``scale_grid`` would,
compiled once (``prepare_grid``) and then timed round-robin with every other program of its batch
size (``time_grids``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.settings import BASE_LR, LR_RATIO, VARIANTS_PER_SEED
from scalelab import grid, sharding
from scalelab.config import DataConfig, GridConfig, RunConfig, TrainConfig
from scalelab.models import count_params
from scalelab.runner import plan_grid

# Short epochs are timed more often: a figure is the best of at least --repeats runs and of
# enough runs to cover MIN_TIMED_S, since a 50 ms epoch on a shared machine is easily disturbed.
MIN_TIMED_S, MAX_REPEATS = 0.5, 20
_init_grid = jax.jit(grid.init_grid, static_argnums=(0, 2, 3))


def grid_layout(num_models: int) -> tuple[int, tuple[float, ...]]:
    """(S seeds, V learning rates) with S x V = M: about ``VARIANTS_PER_SEED`` variants per seed.

    Variant v has lr ``BASE_LR * LR_RATIO**v``, so model (seed s, variant v) is the same model
    whatever M, and a smaller grid's models are among a larger one's.
    """
    seeds = max(1, num_models // VARIANTS_PER_SEED)
    while num_models % seeds:
        seeds -= 1
    return seeds, tuple(BASE_LR * LR_RATIO**v for v in range(num_models // seeds))


def grid_models(num_models: int) -> list[tuple[int, float]]:
    """The (seed, lr) of every model of the M-model grid, in the grid's flat order s * V + v."""
    seeds, lrs = grid_layout(num_models)
    return [(s, lr) for s in range(seeds) for lr in lrs]


def run_config(settings: dict, batch_size: int, seeds: int, lrs: tuple[float, ...]) -> RunConfig:
    """The default study's model, loss and optimiser on an (S, V) grid of lrs at inputs /255."""
    return RunConfig(
        data=DataConfig(train_limit=settings["train_limit"], test_limit=settings["test_limit"]),
        train=TrainConfig(batch_size=batch_size, epochs=1),
        grid=GridConfig(inputs=("/255",), seeds=seeds, lrs=lrs),
    )


@dataclasses.dataclass(frozen=True)
class GridTiming:
    compile_s: float
    models_per_block: int  # models stepped together, as the grid planner chose
    devices: int  # devices the grid is spread over, as scale_grid would
    call_s: tuple[float, ...]  # per call: the best single epoch of that call's models
    num_params: int  # per model
    steps_per_epoch: int
    finite: bool  # every model's training loss stayed finite


@dataclasses.dataclass
class PreparedGrid:
    """One compiled grid epoch and the states of each of its calls, ready to be timed."""

    compiled: object
    data: object
    calls: list  # per call: [state, hypers, order keys]
    compile_s: float
    models_per_block: int
    devices: int
    num_params: int
    steps_per_epoch: int


def prepare_grid(
    config: RunConfig,
    dataset,
    calls: Sequence[tuple[Sequence[int], Sequence[float]]],
    models_per_block: int | None = None,
    one_device: bool = False,
) -> PreparedGrid:
    """Compiles ``grid.train_epoch`` once for ``config``'s (S, V) grid and sets up each call.

    Each call is ``(seeds, lrs)`` with ``len(seeds) == config.grid.seeds`` and ``len(lrs) ==
    len(config.grid.lrs)``: the models of one invocation of the same compiled program (its own
    initial weights, minibatch order and learning rates). The grid is spread over the devices and
    stepped in the blocks that ``scale_grid`` would use (``runner.plan_grid``,
    ``sharding.grid_placement``); with ``one_device`` it stays on the first device.
    """
    plan = plan_grid(config, dataset, models_per_block)
    devices = jax.devices()[:1] if one_device else None  # None: as the runner places it
    layout, mesh = sharding.grid_placement(len(calls[0][0]), len(calls[0][1]), devices)
    program = dataclasses.replace(plan.program, mesh=mesh)
    input_dim = plan.data.train_x.shape[1]
    prepared, data = [], None
    for seeds, lrs in calls:
        states, hypers, keys = _initial_call(config, dataset, program, seeds, lrs, input_dim)
        states, hypers, data, keys = sharding.shard_grid(layout, mesh, states, hypers, plan.data, keys)
        prepared.append([states, hypers, keys])
    epoch_fn = jax.jit(grid.train_epoch, static_argnums=0, donate_argnums=1)
    start = time.perf_counter()
    compiled = epoch_fn.lower(program, *prepared[0][:2], data, prepared[0][2], jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    per_device = layout.padded_seeds * layout.padded_variants // mesh.devices.size
    block = grid.models_per_block(per_device, program.models_per_block)
    steps = program.num_steps(len(plan.data.train_x))
    num_params = count_params(program.model, input_dim)
    return PreparedGrid(compiled, data, prepared, compile_s, block, mesh.devices.size, num_params, steps)


def _initial_call(config: RunConfig, dataset, program, seeds, lrs, input_dim: int):
    """One call's initial states (on the host), hypers and minibatch-order keys, as the runner makes them."""
    axes = dataclasses.replace(config.grid, seeds=len(seeds), lrs=tuple(lrs))
    init_keys, keys = grid.seed_keys(tuple(seeds))
    hypers = plan_grid(dataclasses.replace(config, grid=axes), dataset).hypers
    states = sharding.to_host(_init_grid(program, init_keys, len(lrs), input_dim))
    return states, hypers, np.asarray(keys)


def time_grids(grids: Sequence[PreparedGrid], repeats: int) -> list[GridTiming]:
    """Times one epoch of every call of every grid, round-robin over all of them.

    Interleaving means a burst of load from elsewhere hits every figure alike, and the ratios
    between figures come from the same stretch of time. A call's figure is its best epoch of at
    least ``repeats`` and of enough epochs to cover ``MIN_TIMED_S``.
    """
    jobs = [(g, call) for g in grids for call in g.calls]
    for g, call in jobs:  # one untimed run: a program's first execution pays one-off set-up
        call[0], _ = jax.block_until_ready(g.compiled(call[0], call[1], g.data, call[2], jnp.int32(0)))
    best, timed, runs, finite = [math.inf] * len(jobs), [0.0] * len(jobs), [0] * len(jobs), [True] * len(jobs)

    def wants_more(i):
        return runs[i] < repeats or (timed[i] < MIN_TIMED_S and runs[i] < MAX_REPEATS)

    repeat = 1
    while any(wants_more(i) for i in range(len(jobs))):
        for i, (g, call) in enumerate(jobs):
            if wants_more(i):
                seconds, finite_loss = _timed_epoch(g, call, repeat)
                best[i], timed[i], runs[i] = min(best[i], seconds), timed[i] + seconds, runs[i] + 1
                finite[i] &= finite_loss
        repeat += 1
    timings, i = [], 0
    for g in grids:
        n = len(g.calls)
        timings.append(GridTiming(g.compile_s, g.models_per_block, g.devices, tuple(best[i : i + n]), g.num_params,
                                  g.steps_per_epoch, all(finite[i : i + n])))  # fmt: skip
        i += n
    return timings


def _timed_epoch(g: PreparedGrid, call: list, epoch: int) -> tuple[float, bool]:
    """Seconds for one epoch of ``call`` (its state advanced in place) and whether every loss stayed finite."""
    start = time.perf_counter()
    call[0], metrics = g.compiled(call[0], call[1], g.data, call[2], jnp.int32(epoch))
    jax.block_until_ready((call[0], metrics))
    seconds = time.perf_counter() - start
    return seconds, bool(np.isfinite(np.asarray(metrics.train_loss)).all())
