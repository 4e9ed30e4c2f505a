"""What a numeric axis costs: a grid over inputs x lr x init scale x eps against one over lr alone.

Both grids hold the same M models of the benched MLP at batch 32 (S seeds x V variants, V the same),
planned by ``runner.plan_grid`` and placed by ``sharding.grid_placement`` as ``scale_grid`` would,
and timed interleaved (``grids.time_grids``). Every numeric axis is a vmapped argument of the same
compiled program (a row of ``Hypers``; eps rebuilds each model's Adam inside the vmapped step), so
the target is a ratio of model-samples/s >= 0.97 (issue 14).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from experiments.bench.grids import PreparedGrid, run_config, time_grids
from experiments.bench.settings import BASE_LR, LR_RATIO
from experiments.bench.timing import say
from scalelab import grid, sharding
from scalelab.config import RunConfig
from scalelab.models import count_params
from scalelab.runner import plan_grid

TARGET = 0.97
# 2 transforms x 2 lrs x 2 init scales x 2 eps = 16 variants a seed: every axis varies at once.
AXES = {"inputs": ("/255", "zscore"), "lrs": (1e-3, 5e-4), "init_scales": (1.0, 0.5), "epsilons": (1e-7, 1e-3)}
VARIANTS = 16


def numeric_axes_bench(settings: dict, dataset, num_models: int = 32) -> dict:
    """Model-samples/s of the all-axes grid over the lr-only grid at the same M (one process, interleaved)."""
    seeds = max(1, num_models // VARIANTS)
    lr_only = run_config(settings, 32, seeds, tuple(BASE_LR * LR_RATIO**v for v in range(VARIANTS)))
    every_axis = dataclasses.replace(lr_only, grid=dataclasses.replace(lr_only.grid, **AXES))
    say(f"numeric axes: {seeds * VARIANTS} models, lr only vs {' x '.join(AXES)}")
    prepared = [prepare(lr_only, dataset), prepare(every_axis, dataset)]
    lr_timing, axes_timing = time_grids(prepared, settings["repeats"])
    ratio = lr_timing.call_s[0] / axes_timing.call_s[0]
    return {
        "models": seeds * VARIANTS,
        "batch_size": 32,
        "lr_only": {"variants": f"{VARIANTS} learning rates", "epoch_s": lr_timing.call_s[0]},
        "every_axis": {
            "variants": " x ".join(f"{len(v)} {k}" for k, v in AXES.items()),
            "epoch_s": axes_timing.call_s[0],
        },  # fmt: skip
        "throughput_ratio": ratio,
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "finite": lr_timing.finite and axes_timing.finite,
    }


def prepare(config: RunConfig, dataset) -> PreparedGrid:
    """``config``'s whole grid compiled once and placed as the runner would, its init kernels scaled."""
    plan = plan_grid(config, dataset)
    num_seeds, num_variants = len(plan.seeds), plan.num_variants
    layout, mesh = sharding.grid_placement(num_seeds, num_variants)
    program = dataclasses.replace(plan.program, mesh=mesh)
    init_keys, order_keys = grid.seed_keys(plan.seeds)
    input_dim = plan.data.train_x.shape[1]
    states = sharding.to_host(
        jax.jit(grid.init_grid, static_argnums=(0, 2, 3))(program, init_keys, num_variants, input_dim)
    )
    states = grid.scale_initial_kernels(states, plan.init_scales, first_only=True)
    states, hypers, data, keys = sharding.shard_grid(
        layout, mesh, states, plan.hypers, plan.data, sharding.to_host(order_keys)
    )
    epoch_fn = jax.jit(grid.train_epoch, static_argnums=0, donate_argnums=1)
    compiled = epoch_fn.lower(program, states, hypers, data, keys, jnp.int32(0)).compile()
    per_device = layout.padded_seeds * layout.padded_variants // mesh.devices.size
    block = grid.models_per_block(per_device, program.models_per_block)
    steps = program.num_steps(len(plan.data.train_x))
    return PreparedGrid(compiled, data, [[states, hypers, keys]], 0.0, block, mesh.devices.size,
                        count_params(program.model, input_dim), steps)  # fmt: skip
