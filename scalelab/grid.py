"""The grid: every model of a sweep trained by one compiled program.

Layout. A grid has two leading model axes, ``(S, V)``: S seeds, and V variants (an input
transform and a learning rate) per seed. Models that share a seed share their initial weights
and their minibatch order (the controlled comparison of the posts), so the V variants of a seed
see the *same* raw minibatch, each through its own input transform. The flat model index is
``s * V + v``.

``train_epoch`` is one ``lax.scan`` over the epoch's minibatches whose body is
``vmap(train.train_step)`` over the flat model axis (``_scan_steps``); the uint8 data is an
argument that lives on each device once, shared by its models. Evaluation on the test set
follows in the same compiled call. Two layers around that scan are for speed only: device by
device under ``shard_map`` (``train_steps``) and, on a CPU, block by block for the cache
(``_blocked``). ``scalelab.reference.train_epoch_reference`` is the same epoch without either
and without the step's CPU tunings; ``tests/test_reference.py`` checks that they agree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from scalelab import train
from scalelab.models import MLP
from scalelab.optim import OptimizerConfig, make_direction
from scalelab.sharding import SEEDS, VARIANTS
from scalelab.train import Batch, Hypers, StepMetrics


class DeviceData(NamedTuple):
    train_x: jax.Array  # (N, D) uint8
    train_y: jax.Array  # (N,) int32
    test_x: jax.Array  # (Nt, D) uint8
    test_y: jax.Array  # (Nt,) int32


class EpochMetrics(NamedTuple):
    """Per model, shape (S, V) each."""

    train_loss: jax.Array
    train_acc: jax.Array
    test_loss: jax.Array
    test_acc: jax.Array
    grad_norm: jax.Array
    stopped: jax.Array
    diverged: jax.Array


@dataclass(frozen=True)
class Program:
    """Everything static about a grid: changing any field compiles a new program."""

    model: MLP  # a Flax module (hashable)
    loss_fn: train.LossFn
    direction: optax.GradientTransformation
    batch_size: int
    patience: int
    eval_chunk: int = 1000
    models_per_block: int = 0  # train this many models at a time (CPU cache); 0: all at once
    mesh: Mesh | None = None  # the (seeds, variants) mesh the grid is sharded over; None: no shard_map
    optimizer: OptimizerConfig | None = None  # what ``direction`` was made from: rebuilt per model on an eps axis

    def direction_for(self, hypers: Hypers) -> optax.GradientTransformation:
        """One model's direction: ``direction``, or on a numeric optimiser axis (``Hypers.eps`` /
        ``weight_decay`` set) the same optimiser made with the model's own (traced) values."""
        changes = {name: getattr(hypers, name) for name in ("eps", "weight_decay") if getattr(hypers, name) is not None}
        if not changes:
            return self.direction
        if self.optimizer is None:
            raise ValueError("a grid with an eps or weight-decay axis needs Program.optimizer")
        return make_direction(dataclasses.replace(self.optimizer, **changes))

    def num_steps(self, num_train: int) -> int:
        return math.ceil(num_train / self.batch_size)


def seed_keys(seeds) -> tuple[jax.Array, jax.Array]:
    """(init keys, data-order keys), shape (S, 2) each; a model's randomness is its seed's alone."""
    keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(jnp.asarray(seeds))
    return keys[:, 0], keys[:, 1]


def init_grid(program: Program, init_keys: jax.Array, num_variants: int, input_dim: int):
    """States with leading axes (S, V); the V variants of a seed start from identical weights."""

    def one_seed(key):
        state = train.init_state(program.model, program.direction, key, input_dim)
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_variants, *jnp.shape(x))), state)

    return jax.vmap(one_seed)(init_keys)


def scale_initial_kernels(states, scales: np.ndarray, first_only: bool):
    """Initial states (S, V, ...) with variant v's kernels times ``scales[v]`` (the first layer's,
    or every layer's); biases start at zero and optimiser moments at zero, so nothing else changes.
    """

    def scaled(path, x):
        names = [getattr(k, "key", getattr(k, "name", "")) for k in path]
        is_kernel = names[-1:] == ["kernel"] and "params" in names
        if not is_kernel or (first_only and "Dense_0" not in names):
            return x
        return np.asarray(x) * scales.reshape(1, -1, *([1] * (np.ndim(x) - 2))).astype(np.asarray(x).dtype)

    return states._replace(params=jax.tree_util.tree_map_with_path(scaled, states.params))


def epoch_order(program: Program, order_key: jax.Array, epoch, num_train: int) -> jax.Array:
    """The epoch's minibatch indices, (steps, B): a fresh shuffle per (seed, epoch).

    The last batch is padded with indices from the start of the shuffle; their weight is zero,
    so it counts like Keras' smaller last batch.
    """
    steps = program.num_steps(num_train)
    perm = jax.random.permutation(jax.random.fold_in(order_key, epoch), num_train)
    pad = steps * program.batch_size - num_train
    return jnp.concatenate([perm, perm[:pad]]).reshape(steps, program.batch_size)


def _pad_weights(steps: int, batch_size: int, num_real: int) -> jax.Array:
    return (jnp.arange(steps * batch_size) < num_real).astype(jnp.float32).reshape(steps, batch_size)


def epoch_batches(program: Program, order_keys: jax.Array, epoch, num_train: int):
    """Every seed's minibatch indices for one epoch, (steps, S, B), and the padding weights (steps, B)."""
    steps = program.num_steps(num_train)
    orders = jax.vmap(lambda k: epoch_order(program, k, epoch, num_train))(order_keys)
    return orders.swapaxes(0, 1), _pad_weights(steps, program.batch_size, num_train)


def zero_sums(states) -> StepMetrics:
    """Running epoch sums with the grid's (S, V) shape, all zero."""
    shape = states.step.shape
    return jax.tree.map(lambda z: jnp.broadcast_to(z, shape), StepMetrics.zeros())


def models_per_block(num_models: int, requested: int) -> int:
    """How many models ``train_steps`` steps together: ``requested`` (0: all), at most all of them."""
    return num_models if requested <= 0 else min(requested, num_models)


def train_steps(program: Program, states, sums: StepMetrics, hypers: Hypers, data: DeviceData, orders, weights, epoch):
    """The updates of ``orders`` (steps, S, B) for every model, as one ``lax.scan`` per block.

    Returns (states, sums) with this stretch's step metrics added to ``sums``. An epoch is one
    call over all of its steps (``train_epoch``), or several over consecutive stretches when the
    run measures curvature part-way through an epoch; the per-step arithmetic is the same.

    With ``program.mesh`` every device runs ``_device_steps`` on its own (S / ds, V / dv) block
    of models (``jax.shard_map``; the models never talk, so there are no collectives), which
    lets each device step its models in cache blocks of its own. Leaving the partitioning of a
    ``lax.map`` over blocks to the compiler instead would split each block across devices.
    """
    if program.mesh is None:
        return _device_steps(program, states, sums, hypers, data, orders, weights, epoch)
    models = P(SEEDS, VARIANTS)
    per_device = jax.shard_map(
        functools.partial(_device_steps, program),
        mesh=program.mesh,
        in_specs=(models, models, P(VARIANTS), P(), P(None, SEEDS), P(), P()),
        out_specs=(models, models),
    )
    return per_device(states, sums, hypers, data, orders, weights, epoch)


def _device_steps(program: Program, states, sums, hypers: Hypers, data: DeviceData, orders, weights, epoch):
    """``train_steps`` for the models on one device (all of them without a mesh).

    Inside, the (S, V) grid is one flat model axis (a reshape, free) under a single ``vmap``:
    nested vmaps over seeds and variants measured 25-40% slower on the CPU. With
    ``program.models_per_block`` below the device's model count the models go through
    ``_blocked`` (a CPU tuning); otherwise all of them take each step together (``_scan_steps``).
    """
    num_seeds, num_variants = states.step.shape
    num_models = num_seeds * num_variants
    block = models_per_block(num_models, program.models_per_block)
    model_hypers = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_seeds, *a.shape)), hypers)  # model s * V + v
    if block == num_models:

        def seed_to_models(order):  # (S, B) -> (S * V, B): a seed's variants share its minibatch
            return jnp.broadcast_to(order[:, None], (num_seeds, num_variants, order.shape[-1])).reshape(num_models, -1)

        out = _scan_steps(
            program, _flat(states), _flat(sums), _flat(model_hypers), data, orders, weights, epoch, seed_to_models
        )
    else:
        model_orders = jnp.repeat(orders, num_variants, axis=1)  # (steps, S * V, B)
        out = _blocked(program, block, states, sums, model_hypers, data, model_orders, weights, epoch)
    return jax.tree.map(lambda a: a.reshape(num_seeds, num_variants, *a.shape[1:]), out)


def _flat(tree):
    """(S, V, ...) -> (S * V, ...) on every leaf: model ``s * V + v``."""
    return jax.tree.map(lambda a: a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]), tree)


def _blocked(program: Program, block: int, states, sums, hypers, data: DeviceData, orders, weights, epoch):
    """``_scan_steps`` for the M = S * V models, ``block`` models at a time (a CPU tuning).

    ``states``, ``sums``, ``hypers``: leading axes (S, V); ``orders``: (steps, M, B); returns the
    flat (M, ...) ``(states, sums)``. The models are trained block after block (``lax.map``),
    each block's whole stretch at once, so that a block's parameters and optimiser state stay in
    the CPU's cache across steps; a grid too large for the cache otherwise streams all of its
    state from memory at every step (measured 2x slower at 64 models). The last block is filled
    up with copies of the first models, whose results are dropped. A model's arithmetic is the
    one it has unblocked (to float32 rounding: the matmuls are blocked differently).
    """
    num_models = orders.shape[1]
    num_blocks = -(-num_models // block)
    fill = num_blocks * block - num_models

    def blocks(a, axis=0):  # (..., M, ...) -> (blocks, ..., block, ...) along the model axis
        a = jnp.concatenate([a, jax.lax.slice_in_dim(a, 0, fill, axis=axis)], axis=axis)
        return jnp.moveaxis(a.reshape(*a.shape[:axis], num_blocks, block, *a.shape[axis + 1 :]), axis, 0)

    model_orders = blocks(orders, axis=1)  # (blocks, steps, block, B)
    args = (*jax.tree.map(blocks, (_flat(states), _flat(sums), _flat(hypers))), model_orders)
    out = jax.lax.map(lambda a: _scan_steps(program, a[0], a[1], a[2], data, a[3], weights, epoch, lambda o: o), args)
    return jax.tree.map(lambda a: a.reshape(num_blocks * block, *a.shape[2:])[:num_models], out)


def _scan_steps(program: Program, states, sums, hypers, data: DeviceData, orders, weights, epoch, to_models):
    """A stretch of steps for a flat axis of models; ``to_models`` maps a step's order to (models, B)."""
    step = jax.vmap(
        lambda s, h, b: train.train_step(program.model, program.loss_fn, program.direction_for(h), s, h, b, epoch)
    )

    def body(carry, xs):
        states, sums = carry
        order, weight = xs
        order = to_models(order)
        batch = Batch(
            x=data.train_x[order].astype(jnp.float32),
            y=data.train_y[order],
            weight=jnp.broadcast_to(weight, order.shape),
        )
        states, metrics = step(states, hypers, batch)
        return (states, jax.tree.map(jnp.add, sums, metrics)), None

    (states, sums), _ = jax.lax.scan(body, (states, sums), (orders, weights))
    return states, sums


def finish_epoch(program: Program, states, sums: StepMetrics, hypers: Hypers, data: DeviceData, epoch):
    """Test evaluation, early stopping and divergence checks after an epoch's last step."""
    test_loss, test_acc = evaluate(program, states.params, hypers, data.test_x, data.test_y)
    status = jax.vmap(jax.vmap(lambda st, tl: train.end_of_epoch(st, tl, epoch, program.patience)))(
        states.status, test_loss
    )
    states = states._replace(status=status)
    metrics = EpochMetrics(
        train_loss=sums.loss_sum / sums.examples,
        train_acc=sums.correct_sum / sums.examples,
        test_loss=test_loss,
        test_acc=test_acc,
        grad_norm=sums.grad_norm_sum / sums.count,
        stopped=status.stopped,
        diverged=status.diverged,
    )
    return states, metrics


def train_epoch(program: Program, states, hypers: Hypers, data: DeviceData, order_keys, epoch):
    """One epoch for every model of the grid; returns (states, EpochMetrics).

    ``states``: (S, V, ...); ``hypers``: (V, ...); ``order_keys``: (S, 2); ``epoch``: int32.
    """
    orders, weights = epoch_batches(program, order_keys, epoch, data.train_x.shape[0])
    states, sums = train_steps(program, states, zero_sums(states), hypers, data, orders, weights, epoch)
    return finish_epoch(program, states, sums, hypers, data, epoch)


def evaluate(program: Program, params, hypers: Hypers, x_u8: jax.Array, y: jax.Array):
    """Mean loss and accuracy of every model on (x, y); params (S, V, ...) -> (S, V) each.

    The examples are scanned in chunks, shared by all models, so memory stays
    O(models x chunk) whatever the test set's size.
    """
    num = x_u8.shape[0]
    chunk = min(program.eval_chunk, num)
    num_chunks = math.ceil(num / chunk)
    pad = num_chunks * chunk - num
    xs = jnp.concatenate([x_u8, x_u8[:pad]]).reshape(num_chunks, chunk, -1)
    ys = jnp.concatenate([y, y[:pad]]).reshape(num_chunks, chunk)
    ws = _pad_weights(num_chunks, chunk, num)

    one = lambda p, h, b: train.eval_batch(program.model, program.loss_fn, p, h, b)  # noqa: E731
    per_model = jax.vmap(jax.vmap(one, in_axes=(0, 0, None)), in_axes=(0, None, None))

    def body(total, chunk_xs):
        cx, cy, cw = chunk_xs
        return total + per_model(params, hypers, Batch(cx.astype(jnp.float32), cy, cw)), None

    shape = jax.tree.leaves(params)[0].shape[:2] + (2,)
    totals, _ = jax.lax.scan(body, jnp.zeros(shape, jnp.float32), (xs, ys, ws))
    return totals[..., 0] / num, totals[..., 1] / num


def estimate_bytes_per_model(num_params: int, widths: tuple[int, ...], batch_size: int, eval_chunk: int) -> int:
    """A generous upper bound on one model's device memory inside the compiled epoch.

    Parameters, optimiser state (up to two moments), gradients, updates, the masked copies and
    the donated double buffer: ~10 copies of the parameters; plus forward/backward activations
    of one minibatch and of one evaluation chunk, float32.
    """
    activations = (batch_size * 3 + eval_chunk) * sum(widths) * 4
    return 10 * num_params * 4 + activations


def split_chunks(num_seeds: int, num_variants: int, max_models: int) -> list[tuple[slice, slice]]:
    """Splits the (S, V) grid into (seed slice, variant slice) chunks of at most ``max_models``.

    Whole seeds are kept together where possible, since a seed's variants share minibatches.
    """
    max_models = max(1, max_models)
    if num_seeds * num_variants <= max_models:
        return [(slice(0, num_seeds), slice(0, num_variants))]
    if num_variants <= max_models:
        per = max_models // num_variants
        return [(slice(s, min(s + per, num_seeds)), slice(0, num_variants)) for s in range(0, num_seeds, per)]
    return [
        (slice(s, s + 1), slice(v, min(v + max_models, num_variants)))
        for s in range(num_seeds)
        for v in range(0, num_variants, max_models)
    ]


def to_numpy(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))
