"""Trains small grids unsharded and sharded over every device; saves both for test_sharding.py.

Run in its own process, since the device count is fixed when JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests.sharded_check OUT_DIR [S,V ...]

For each grid ``S,V`` it writes ``OUT_DIR/S_V.npz`` holding the per-epoch metrics and final
parameters of its models trained by the plain ``jax.jit(grid.train_epoch)`` on one device
(``plain/...``) and by the sharded one (each device its own models, ``shard_map``, in blocks of
one model) after ``unpad`` (``sharded/...``), and facts about the
sharded outputs' layout (``facts/...``). The plain run trains the largest grid once, and each grid
takes its corner: a model trains the same whatever its neighbours (test_grid), and every plain
grid would cost another compile.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scalelab import grid as grid_lib
from scalelab import sharding
from scalelab.losses import get_loss
from scalelab.models import make_model
from scalelab.optim import OptimizerConfig, make_direction
from scalelab.train import Hypers
from tests.conftest import make_images

EPOCHS = 3
GRIDS = ("3,2", "1,3", "2,3")  # seed padding on a (4, 1) mesh, variant padding on (1, 4), both axes on (2, 2)
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def tiny_problem(num_variants: int):
    train_x, train_y = make_images(200, seed=0)
    test_x, test_y = make_images(50, seed=1)
    data = grid_lib.DeviceData(
        train_x.reshape(200, -1), train_y.astype(np.int32), test_x.reshape(50, -1), test_y.astype(np.int32)
    )
    program = grid_lib.Program(
        model=make_model((16,), 10, "relu", "glorot-uniform"),
        loss_fn=get_loss("ce"),
        direction=make_direction(OptimizerConfig(name="adam")),
        batch_size=16,
        patience=0,
    )
    dim = data.train_x.shape[1]
    v = np.arange(num_variants, dtype=np.float32)
    hypers = Hypers(  # distinct transforms and learning rates, so a misplaced variant shows
        shift=np.broadcast_to(10.0 * v[:, None], (num_variants, dim)).copy(),
        scale=np.broadcast_to((v[:, None] + 1) / 255.0, (num_variants, dim)).copy(),
        lr=(1e-3 * (v + 1)).astype(np.float32),
    )
    return program, hypers, data


def train_plain(program, states, hypers, data, order_keys):
    epoch_fn = jax.jit(grid_lib.train_epoch, static_argnums=0)
    hypers, data = jax.device_put(hypers), jax.device_put(data)
    history = []
    for epoch in range(EPOCHS):
        states, metrics = epoch_fn(program, states, hypers, data, order_keys, np.int32(epoch))
        history.append(sharding.to_host(metrics))
    return sharding.to_host(states), history


def train_sharded(program, states, hypers, data, order_keys, num_seeds, num_variants):
    layout = sharding.plan_layout(num_seeds, num_variants, jax.device_count())
    mesh = sharding.make_mesh(layout)
    args = sharding.shard_grid(layout, mesh, sharding.to_host(states), hypers, data, order_keys)
    # As the runner does: each device trains its own models (shard_map), here one at a time
    # (blocks of 1), against the plain program's all-at-once vmap.
    program = dataclasses.replace(program, mesh=mesh, models_per_block=1)
    epoch_fn = jax.jit(grid_lib.train_epoch, static_argnums=0, donate_argnums=1)
    compiled = epoch_fn.lower(program, *args, np.int32(0)).compile()  # compiled once, and inspectable
    states, hypers, data, order_keys = args
    history = []
    for epoch in range(EPOCHS):
        states, metrics = compiled(states, hypers, data, order_keys, np.int32(epoch))
        history.append(sharding.unpad(sharding.to_host(metrics), layout))
    kernel = states.params["params"]["Dense_0"]["kernel"]
    facts = {
        "mesh": np.array(mesh.devices.shape),
        "devices": np.array(len(kernel.sharding.device_set)),
        "shard_shapes": np.array([shard.data.shape[:2] for shard in kernel.addressable_shards]),
        "metric_devices": np.array(len(metrics.test_loss.sharding.device_set)),
        "padded_stopped": sharding.to_host(states.status.stopped),
        "collectives": np.array(sum(compiled.as_text().count(name) for name in COLLECTIVES)),
    }
    return sharding.unpad(sharding.to_host(states), layout), history, facts


def initial_states(program, data, num_seeds: int, num_variants: int):
    """Host states of the largest grid; a smaller grid is its corner, so init compiles once."""
    init_keys, _ = grid_lib.seed_keys(range(num_seeds))
    init = jax.jit(grid_lib.init_grid, static_argnums=(0, 2, 3))
    return sharding.to_host(init(program, init_keys, num_variants, data.train_x.shape[1]))


def flatten(name: str, states, history) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(states.params)[0]:
        out[f"{name}/params{jax.tree_util.keystr(path)}"] = leaf
    for field in grid_lib.EpochMetrics._fields:
        out[f"{name}/{field}"] = np.stack([getattr(m, field) for m in history])
    return out


def corner(tree, num_seeds: int, num_variants: int):
    """The first ``num_seeds`` x ``num_variants`` models of (S, V, ...) leaves."""
    return jax.tree.map(lambda x: x[:num_seeds, :num_variants], tree)


def main(out_dir: str, grids: list[str]) -> None:
    jnp.zeros(())  # start the backend before printing what it found
    print(f"{jax.device_count()} devices: {jax.devices()}")
    shapes = [tuple(map(int, spec.split(","))) for spec in grids]
    max_seeds, max_variants = (max(axis) for axis in zip(*shapes, strict=True))
    program, hypers, data = tiny_problem(max_variants)
    all_states = initial_states(program, data, max_seeds, max_variants)
    _, all_keys = grid_lib.seed_keys(range(max_seeds))
    plain_states, plain_history = train_plain(program, all_states, hypers, data, all_keys)
    for s, v in shapes:
        states, some_hypers = corner(all_states, s, v), jax.tree.map(lambda h, v=v: h[:v], hypers)
        sharded_states, sharded_history, facts = train_sharded(program, states, some_hypers, data, all_keys[:s], s, v)
        result = {f"facts/{k}": value for k, value in facts.items()}
        result |= flatten("plain", corner(plain_states, s, v), corner(plain_history, s, v))
        result |= flatten("sharded", sharded_states, sharded_history)
        np.savez(Path(out_dir) / f"{s}_{v}.npz", **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(GRIDS))
