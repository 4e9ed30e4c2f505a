"""The per-model step and epoch-end rules, checked on tiny inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalelab import train
from scalelab.losses import softmax_cross_entropy
from scalelab.models import make_model
from scalelab.optim import OPTIMIZERS, OptimizerConfig, optax_direction
from scalelab.train import Batch, Hypers, ModelStatus


@pytest.fixture
def setup():
    model = make_model((8,), 3, "relu", "glorot-uniform")
    direction = optax.scale_by_adam(eps=1e-7)
    state = train.init_state(model, direction, jax.random.PRNGKey(0), 5)
    rng = np.random.default_rng(0)
    batch = Batch(
        x=jnp.asarray(rng.integers(0, 256, (6, 5)), jnp.float32),
        y=jnp.asarray(rng.integers(0, 3, 6), jnp.int32),
        weight=jnp.ones(6),
    )
    hypers = Hypers(shift=jnp.full(5, 10.0), scale=jnp.full(5, 1 / 50), lr=jnp.float32(1e-2))
    return model, direction, state, batch, hypers


@pytest.mark.parametrize(
    "direction,reference",
    [
        (optax.identity(), optax.sgd(1e-2)),
        (optax.trace(decay=0.9), optax.sgd(1e-2, momentum=0.9)),
        (optax.scale_by_adam(eps=1e-7), optax.adam(1e-2, eps=1e-7)),
    ],
    ids=["sgd", "momentum", "adam"],
)
def test_step_matches_a_hand_written_optax_update_on_transformed_inputs(setup, direction, reference):
    model, _, _, batch, hypers = setup
    state = train.init_state(model, direction, jax.random.PRNGKey(0), 5)
    new_state, metrics = train.train_step(model, softmax_cross_entropy, direction, state, hypers, batch, 0)

    def loss(p):
        return softmax_cross_entropy(model.apply(p, (batch.x - hypers.shift) * hypers.scale), batch.y).mean()

    grads = jax.grad(loss)(state.params)
    updates, _ = reference.update(grads, reference.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected)
    assert int(new_state.step) == 1
    assert float(metrics.loss_sum) == pytest.approx(float(loss(state.params)) * 6, rel=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_masked_with_plain_kernels_is_the_plain_step_for_an_active_model(setup, name, jit):
    """The masks change nothing for a model that trains: bit for bit, over three steps."""
    model, _, _, batch, hypers = setup
    direction = optax_direction(OptimizerConfig(name=name))
    state = train.init_state(model, direction, jax.random.PRNGKey(0), 5)
    plain = functools.partial(train.step, model, softmax_cross_entropy, direction)
    masked = functools.partial(train.masked, model, softmax_cross_entropy, direction, kernels=train.PLAIN)
    if jit:
        plain, masked = jax.jit(plain), jax.jit(masked)
    params, opt_state = state.params, state.opt_state
    for step in range(3):
        params, opt_state, plain_metrics = plain(params, opt_state, hypers, batch)
        state, metrics = masked(state, hypers, batch, jnp.int32(step))
        jax.tree.map(np.testing.assert_array_equal, (state.params, state.opt_state), (params, opt_state))
        jax.tree.map(np.testing.assert_array_equal, metrics, plain_metrics)
    assert int(state.step) == 3 and not bool(state.status.diverged)


def test_padding_examples_with_zero_weight_do_not_change_the_update(setup):
    model, direction, state, batch, hypers = setup
    padded = Batch(
        x=jnp.concatenate([batch.x, jnp.full((2, 5), 255.0)]),
        y=jnp.concatenate([batch.y, jnp.zeros(2, jnp.int32)]),
        weight=jnp.concatenate([batch.weight, jnp.zeros(2)]),
    )
    a, _ = train.train_step(model, softmax_cross_entropy, direction, state, hypers, batch, 0)
    b, _ = train.train_step(model, softmax_cross_entropy, direction, state, hypers, padded, 0)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a.params, b.params)


@pytest.mark.parametrize("flag", ["stopped", "diverged"])
def test_stopped_or_diverged_models_do_not_change(setup, flag):
    model, direction, state, batch, hypers = setup
    state = state._replace(status=state.status._replace(**{flag: jnp.array(True)}))
    new_state, metrics = train.train_step(model, softmax_cross_entropy, direction, state, hypers, batch, 0)
    jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)
    assert int(new_state.step) == 0 and float(metrics.count) == 0


def test_a_non_finite_loss_marks_the_model_diverged_and_keeps_its_last_finite_params(setup):
    model, direction, state, batch, hypers = setup
    bad = hypers._replace(scale=jnp.full(5, jnp.inf))
    new_state, metrics = train.train_step(model, softmax_cross_entropy, direction, state, bad, batch, 3)
    assert bool(new_state.status.diverged) and int(new_state.status.diverge_epoch) == 3
    jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)
    assert not np.isfinite(float(metrics.loss_sum))  # the diverging epoch's mean shows it


def test_a_non_finite_gradient_with_a_finite_loss_marks_the_model_diverged_and_freezes_it(setup):
    model, direction, state, batch, hypers = setup

    def sqrt_of_zero(logits, labels):  # loss 0 everywhere, gradient 0 * inf = NaN
        return jnp.sqrt(jnp.sum(logits * 0.0, axis=-1))

    stepped, metrics = train.train_step(model, sqrt_of_zero, direction, state, hypers, batch, 2)
    assert float(metrics.loss_sum) == 0.0 and not np.isfinite(float(metrics.grad_norm_sum))
    assert bool(stepped.status.diverged) and int(stepped.status.diverge_epoch) == 2
    # Frozen from then on, whatever the next batch brings.
    again, metrics = train.train_step(model, softmax_cross_entropy, direction, stepped, hypers, batch, 3)
    jax.tree.map(np.testing.assert_array_equal, again.params, stepped.params)
    assert int(again.step) == int(stepped.step) and float(metrics.count) == 0
    assert int(again.status.diverge_epoch) == 2


def _run_early_stopping(losses, patience):
    status = ModelStatus.initial()
    for epoch, loss in enumerate(losses):
        status = train.end_of_epoch(status, jnp.float32(loss), jnp.int32(epoch), patience)
    return status


def test_early_stopping_follows_keras_patience_semantics():
    # best at epoch 1; epochs 2 and 3 do not improve -> with patience 2 it stops after epoch 3.
    status = _run_early_stopping([1.0, 0.9, 0.95, 0.96, 0.5], patience=2)
    assert bool(status.stopped) and int(status.stop_epoch) == 3
    assert float(status.best_loss) == pytest.approx(0.9)


def test_early_stopping_resets_its_wait_on_improvement_and_is_off_at_patience_zero():
    assert not bool(_run_early_stopping([1.0, 1.1, 0.8, 0.9, 0.7], patience=2).stopped)
    assert not bool(_run_early_stopping([1.0, 2.0, 3.0, 4.0], patience=0).stopped)


def test_a_non_finite_test_loss_marks_the_model_diverged_not_stopped():
    status = _run_early_stopping([1.0, float("nan")], patience=1)
    assert bool(status.diverged) and int(status.diverge_epoch) == 1 and not bool(status.stopped)
