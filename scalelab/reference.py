"""The grid's epoch written the obvious way: the engine to read first, and to test the tuned one by.

``train_epoch_reference`` takes and returns what ``grid.train_epoch`` does, and computes the
same epoch: the same minibatches (``grid.epoch_batches``), the same step with the same masks
(``train.masked``), the same evaluation and early stopping (``grid.finish_epoch``). What it
leaves out are the engine's speed-ups, each of which gives the same numbers to float32 rounding:

* no ``shard_map`` and no cache blocks: one ``jax.vmap`` over the flat model axis, every step;
* ``train.PLAIN`` kernels: the gradient norm as ``jnp.sum(jnp.square(g))`` and the optimiser's
  update as optax computes it (``optim.optax_direction``), instead of ``scalelab.fastpath``'s
  matrix-vector norm and update read off the new state (whose Adam is in Kingma & Ba's
  reordered form).

``tests/test_reference.py`` trains a small grid through both and states how closely they agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from scalelab import grid, train
from scalelab.grid import DeviceData, EpochMetrics, Program
from scalelab.train import Batch, Hypers, TrainState


def plain_direction(direction: optax.GradientTransformation) -> optax.GradientTransformation:
    """The optax transformation itself: a ``fastpath.SplitDirection`` without its ``from_state``."""
    return optax.GradientTransformation(direction.init, direction.update)


def train_epoch_reference(
    program: Program, states: TrainState, hypers: Hypers, data: DeviceData, order_keys: jax.Array, epoch: jax.Array
) -> tuple[TrainState, EpochMetrics]:
    """One epoch for every model of the grid, as ``grid.train_epoch``; returns (states, EpochMetrics).

    ``states``: (S, V, ...); ``hypers``: (V, ...); ``order_keys``: (S, 2); ``epoch``: int32 ().
    ``program.models_per_block`` and ``program.mesh`` are ignored.
    """
    num_seeds, num_variants = states.step.shape
    orders, weights = grid.epoch_batches(program, order_keys, epoch, data.train_x.shape[0])  # (steps, S, B), (steps, B)
    seed_of_model = jnp.repeat(jnp.arange(num_seeds), num_variants)  # the flat model s * V + v has seed s
    model_hypers = jax.tree.map(lambda h: jnp.concatenate([h] * num_seeds), hypers)  # (S * V, ...)
    direction = plain_direction(program.direction)

    def one_model(state, hyper, batch):
        return train.masked(program.model, program.loss_fn, direction, state, hyper, batch, epoch, train.PLAIN)

    def body(carry, xs):
        states, sums = carry
        order, weight = xs
        indices = order[seed_of_model]  # (S * V, B): a seed's variants share its minibatch
        batch = Batch(data.train_x[indices].astype(jnp.float32), data.train_y[indices],
                      jnp.broadcast_to(weight, indices.shape))  # fmt: skip
        states, metrics = jax.vmap(one_model)(states, model_hypers, batch)
        return (states, jax.tree.map(jnp.add, sums, metrics)), None

    def flat(tree):
        return jax.tree.map(lambda a: a.reshape(num_seeds * num_variants, *a.shape[2:]), tree)

    (states, sums), _ = jax.lax.scan(body, (flat(states), flat(grid.zero_sums(states))), (orders, weights))
    states, sums = jax.tree.map(lambda a: a.reshape(num_seeds, num_variants, *a.shape[1:]), (states, sums))
    return grid.finish_epoch(program, states, sums, hypers, data, epoch)
