"""The tuned engine (``grid.train_epoch``) computes what the plain one (``reference``) computes.

A grid of 2 seeds x 2 input transforms (/255, zscore) x 2 learning rates (MLP 64-8-10 on the
synthetic 8x8 images, keras-ce, batch 16, 13 steps per epoch, 3 epochs, patience 1: six of the
eight models stop after epoch 2 and sit out epoch 3) through the reference and through the
engine as the runner lays it out: all models at once, in cache blocks of 3 (the last one filled
up), and in blocks of 3 under ``shard_map`` on a one-device mesh.

Tolerances, float32, measured on a 2-core CPU at the end (the same grid on 1024 Fashion-MNIST
images, MLP 784-8-10, batch 32, 96 steps, in brackets):

* SGD: parameters equal bit for bit (so are Fashion-MNIST's); the gradient norm differs by its
  summation order only, 7e-8 relative (1.8e-7). Asserted: parameters to 1e-6 relative + 1e-7
  absolute, losses and gradient norms to 1e-6 relative, accuracies and masks exactly.
* Adam: the engine's update is Kingma & Ba's reordered form, within 3e-5 of optax's per step
  (``tests/test_fastpath.py``); at the end the parameters differ by at most 1.3e-7 absolute
  (3.3e-7), 1.6e-5 relative to parameters above 1e-3 in size (8.2e-5), the moments by 4.5e-8
  (2.8e-7), the losses and gradient norms by 1.5e-7 relative (3.1e-7), accuracies not at all.
  Asserted: parameters and moments to 1e-4 relative + 1e-6 absolute, losses and gradient norms
  to 1e-6 relative, accuracies and masks exactly.

Raw pixels (``/1``) are left out: their training is chaotic, and on Fashion-MNIST with Adam the
float32 difference grew to 3e-3 absolute in the parameters and 2% in the test loss in 3 epochs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab import grid, reference, sharding
from scalelab.grid import DeviceData, Program
from scalelab.losses import get_loss
from scalelab.models import make_model
from scalelab.optim import OptimizerConfig, make_direction
from scalelab.train import Hypers
from scalelab.transforms import fit_affine, parse_transform
from tests.conftest import make_images

EPOCHS = 3
SEEDS = (0, 1)
INPUTS = ("/255", "zscore")
LRS = {"adam": (1e-3, 1e-2), "sgd": (1e-2, 1e-1)}
STATE_TOL = {"adam": dict(rtol=1e-4, atol=1e-6), "sgd": dict(rtol=1e-6, atol=1e-7)}
LOSS_TOL = dict(rtol=1e-6, atol=0)  # losses and gradient norms, both optimisers
ENGINES = {"all-at-once": (0, False), "blocks-of-3": (3, False), "blocks-of-3-shard_map": (3, True)}


@pytest.fixture(scope="module")
def data() -> DeviceData:
    train_x, train_y = make_images(200, seed=0)
    test_x, test_y = make_images(50, seed=1)
    return DeviceData(train_x.reshape(200, -1), train_y.astype(np.int32), test_x.reshape(50, -1),
                      test_y.astype(np.int32))  # fmt: skip


def make_grid(data: DeviceData, optimizer: str, lrs, loss="keras-ce") -> tuple[Program, Hypers]:
    """The program (patience 1: early-stopped models sit out the last epoch) and the (V,) hypers, inputs x lrs."""
    constants = [fit_affine(parse_transform(name), data.train_x) for name in INPUTS]
    variants = [(c, lr) for c in constants for lr in lrs]
    hypers = Hypers(
        shift=jnp.asarray(np.stack([c.shift for c, _ in variants])),
        scale=jnp.asarray(np.stack([c.scale for c, _ in variants])),
        lr=jnp.asarray([lr for _, lr in variants], jnp.float32),
    )
    model = make_model((8,), 10, "relu", "glorot-uniform")
    direction = make_direction(OptimizerConfig(name=optimizer))
    return Program(model, get_loss(loss), direction, batch_size=16, patience=1), hypers


def train(epoch_fn, program: Program, hypers: Hypers, data: DeviceData):
    """(final states, [EpochMetrics per epoch]) of ``EPOCHS`` epochs from the seeds' initial weights."""
    init_keys, order_keys = grid.seed_keys(SEEDS)
    states = grid.init_grid(program, init_keys, hypers.lr.shape[0], data.train_x.shape[1])
    epoch_fn = jax.jit(epoch_fn, static_argnums=0)
    device_data = jax.device_put(data)
    history = []
    for epoch in range(EPOCHS):
        states, metrics = epoch_fn(program, states, hypers, device_data, order_keys, jnp.int32(epoch))
        history.append(grid.to_numpy(metrics))
    return grid.to_numpy(states), history


def tuned(program: Program, models_per_block: int, shard: bool) -> Program:
    mesh = sharding.make_mesh(sharding.plan_layout(len(SEEDS), 4, 1), jax.devices()[:1]) if shard else None
    return dataclasses.replace(program, models_per_block=models_per_block, mesh=mesh)


@pytest.fixture(scope="module")
def reference_runs(data):
    runs = {}
    for optimizer, lrs in LRS.items():
        program, hypers = make_grid(data, optimizer, lrs)
        runs[optimizer] = (program, hypers, train(reference.train_epoch_reference, program, hypers, data))
    return runs


def assert_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("optimizer", LRS)
def test_the_tuned_engine_trains_every_model_as_the_reference_does(reference_runs, data, optimizer, engine):
    program, hypers, (ref_states, ref_history) = reference_runs[optimizer]
    states, history = train(grid.train_epoch, tuned(program, *ENGINES[engine]), hypers, data)
    assert_close(states.params, ref_states.params, **STATE_TOL[optimizer])
    assert_close(states.opt_state, ref_states.opt_state, **STATE_TOL[optimizer])
    np.testing.assert_array_equal(states.step, ref_states.step)
    assert ref_states.status.stopped.any() and (ref_states.step < EPOCHS * 13).any()  # some sat out epoch 3
    np.testing.assert_allclose(states.status.best_loss, ref_states.status.best_loss, **LOSS_TOL)
    jax.tree.map(
        np.testing.assert_array_equal, states.status._replace(best_loss=0), ref_states.status._replace(best_loss=0)
    )
    for got, expected in zip(history, ref_history, strict=True):
        for field in ("train_loss", "test_loss", "grad_norm"):
            np.testing.assert_allclose(getattr(got, field), getattr(expected, field), **LOSS_TOL)
        for field in ("train_acc", "test_acc", "stopped", "diverged"):
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))


def test_the_reference_freezes_a_diverging_model_as_the_tuned_engine_does(data):
    # SGD at lr 1e30 beside lr 1e-2; exact cross-entropy, as in test_grid (keras-ce's clip can
    # zero the gradients of a model that would otherwise run away).
    program, hypers = make_grid(data, "sgd", (1e-2, 1e30), loss="ce")
    (ref_states, ref_history), (states, history) = (
        train(fn, p, hypers, data)
        for fn, p in ((reference.train_epoch_reference, program), (grid.train_epoch, tuned(program, 3, False)))
    )
    wild = np.asarray(hypers.lr) == np.float32(1e30)
    assert ref_states.status.diverged[:, wild].all() and not ref_states.status.diverged[:, ~wild].any()
    np.testing.assert_array_equal(states.status.diverged, ref_states.status.diverged)
    np.testing.assert_array_equal(states.status.diverge_epoch, ref_states.status.diverge_epoch)
    np.testing.assert_array_equal(states.step, ref_states.step)  # frozen after the same update
    assert (ref_states.step[:, wild] < ref_states.step[:, ~wild]).all()
    for tree in (states.params, ref_states.params):  # the last finite parameters were kept
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tree))
    assert_close(states.params, ref_states.params, **STATE_TOL["sgd"])
    for got, expected in zip(history, ref_history, strict=True):  # NaN/inf where and as the reference has them
        for field in ("train_loss", "test_loss", "grad_norm"):
            np.testing.assert_allclose(getattr(got, field), getattr(expected, field), **LOSS_TOL)
