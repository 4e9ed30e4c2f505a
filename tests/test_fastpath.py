"""The CPU-tuned pieces of the step (``scalelab.fastpath``) equal their plain forms.

Every optimiser's update read off its new state equals optax's own update; the engine's
gradient norm equals the plain sum of squares; the masked update keeps a frozen model's state.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalelab import fastpath, train
from scalelab.losses import softmax_cross_entropy
from scalelab.models import make_model
from scalelab.optim import OPTIMIZERS, OptimizerConfig, SplitDirection, make_direction
from scalelab.train import Batch, Hypers


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w": jax.random.normal(k1, (7, 5)), "b": jax.random.normal(k2, (5,)), "v": jax.random.normal(k3, (5, 3))}


# float32: Adam's bias corrections 1 - b**t lose ~1e-5 to cancellation in optax's form and in the
# reordered one (SplitDirection's Adam), each rounding differently; both are within 1.4e-5 of a
# float64 Adam (measured). In float64 the two forms agree to 1e-12.
RTOL = {jnp.float32: 3e-5, jnp.float64: 1e-12}


def _updates_over_steps(direction, update, from_state, dtype):
    """(from_state's update, optax's update) for six steps of changing gradients."""
    params = jax.tree.map(lambda p: p.astype(dtype), _params(jax.random.PRNGKey(0)))
    state = direction.init(params)
    pairs = []
    for step in range(6):  # bias corrections and moments change from step to step
        grads = jax.tree.map(lambda p, s=step: jnp.sin(p * (s + 1)) * 10.0 ** (s - 3), params)
        expected, new_state = update(grads, state, params)
        pairs.append((from_state(grads, new_state, params), expected))
        params = jax.tree.map(lambda p, u: p - 1e-2 * u, params, expected)
        state = new_state
    return pairs


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_from_the_new_state_equals_optax_update_over_several_steps(name, jit, dtype):
    direction = make_direction(OptimizerConfig(name=name))
    assert isinstance(direction, SplitDirection)
    update, from_state = direction.update, direction.from_state
    if jit:
        update, from_state = jax.jit(update), jax.jit(from_state)
    with jax.enable_x64(dtype == jnp.float64):
        for got, expected in _updates_over_steps(direction, update, from_state, dtype):
            assert jax.tree.leaves(got)[0].dtype == dtype
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=0), got, expected)


def test_non_default_hyperparameters_reach_the_update_from_state():
    config = OptimizerConfig(name="adamw", b1=0.5, b2=0.9, eps=1e-3, weight_decay=0.3)
    direction = make_direction(config)
    params = _params(jax.random.PRNGKey(1))
    grads = jax.tree.map(jnp.cos, params)
    expected, new_state = optax.chain(
        optax.scale_by_adam(b1=0.5, b2=0.9, eps=1e-3), optax.add_decayed_weights(0.3)
    ).update(grads, direction.init(params), params)
    got = direction.from_state(grads, new_state, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL[jnp.float32]), got, expected)
    rms = make_direction(dataclasses.replace(config, name="rmsprop", rho=0.5))
    expected, new_state = optax.scale_by_rms(decay=0.5, eps=1e-3).update(grads, rms.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), rms.from_state(grads, new_state, params),
                 expected)  # fmt: skip


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_training_step_with_a_split_direction_equals_the_plain_optax_step(name):
    """train_step reads the update off the new state for a SplitDirection; the numbers do not change."""
    model = make_model((8,), 3, "relu", "glorot-uniform")
    split = make_direction(OptimizerConfig(name=name))
    plain = optax.GradientTransformation(split.init, split.update)
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.integers(0, 256, (6, 5)), jnp.float32), jnp.asarray(rng.integers(0, 3, 6)),
                  jnp.ones(6))  # fmt: skip
    hypers = Hypers(shift=jnp.full(5, 10.0), scale=jnp.full(5, 1 / 50), lr=jnp.float32(1e-2))
    states = [train.init_state(model, d, jax.random.PRNGKey(0), 5) for d in (split, plain)]
    for _ in range(3):
        states = [train.train_step(model, softmax_cross_entropy, d, s, hypers, batch, 0)[0]
                  for d, s in zip((split, plain), states, strict=True)]  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL[jnp.float32], atol=1e-7), *states)


def test_frozen_model_keeps_its_state_under_a_split_direction():
    params = _params(jax.random.PRNGKey(2))
    direction = make_direction(OptimizerConfig(name="adam"))
    state = direction.init(params)
    _, state = direction.update(jax.tree.map(jnp.ones_like, params), state, params)
    nan_grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    _, kept = train.masked_update(direction, nan_grads, state, params, jnp.array(False))
    jax.tree.map(np.testing.assert_array_equal, kept, state)
    updates, moved = train.masked_update(direction, jax.tree.map(jnp.ones_like, params), state, params, jnp.array(True))
    assert int(moved.count) == 2 and np.isfinite(np.asarray(updates["w"])).all()


def test_global_norm_equals_the_plain_sum_of_squares_in_float64():
    tree = _params(jax.random.PRNGKey(3)) | {"big": jnp.arange(784 * 128, dtype=jnp.float32).reshape(784, 128) / 1e4}
    exact = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    np.testing.assert_allclose(float(train.global_norm(tree)), exact, rtol=1e-6)
    np.testing.assert_allclose(float(jax.jit(train.global_norm)(tree)), exact, rtol=1e-6)


@pytest.mark.parametrize("shape", [(784, 128), (3, 7, 5), (5,)], ids=["matrix", "3d", "vector"])
def test_the_cpu_sum_of_squares_equals_the_plain_one_to_float32_rounding(shape):
    x = jax.random.normal(jax.random.PRNGKey(4), shape) * 3.0
    plain = float(fastpath.plain_sum_of_squares(x))
    np.testing.assert_allclose(float(jax.jit(fastpath.sum_of_squares)(x)), plain, rtol=1e-6)
    np.testing.assert_allclose(float(train.plain_global_norm({"x": x})), float(train.global_norm({"x": x})), rtol=1e-6)


@pytest.mark.parametrize("apply", [True, False])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_split_masked_update_equals_the_plain_one(name, apply):
    direction = make_direction(OptimizerConfig(name=name))
    params = _params(jax.random.PRNGKey(5))
    _, state = direction.update(jax.tree.map(jnp.sin, params), direction.init(params), params)
    grads = jax.tree.map(jnp.cos, params)
    flag = jnp.array(apply)
    (u_fast, s_fast), (u_plain, s_plain) = (
        jax.jit(fn, static_argnums=0)(direction, grads, state, params, flag)
        for fn in (fastpath.masked_update, train.plain_masked_update)
    )
    jax.tree.map(np.testing.assert_array_equal, s_fast, s_plain)  # the same state, bit for bit
    if apply:  # the update only matters where it is applied
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL[jnp.float32]), u_fast, u_plain)
