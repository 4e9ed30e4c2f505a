"""Each optimiser is optax's own transformation with Keras' defaults, per unit learning rate.

(That the engine's ``SplitDirection`` reads the same update off the new state is
``tests/test_fastpath.py``.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalelab.errors import UsageError
from scalelab.optim import OPTIMIZERS, OptimizerConfig, make_direction, optax_direction

# optax's full optimisers (with a learning rate) that each direction is, at lr = 1: their
# update is minus the direction (optax's scale_by_learning_rate multiplies by -lr).
KERAS_DEFAULTS = {
    "sgd": optax.sgd(1.0),
    "momentum": optax.sgd(1.0, momentum=0.9),
    "rmsprop": optax.rmsprop(1.0, decay=0.9, eps=1e-7),
    "adam": optax.adam(1.0, b1=0.9, b2=0.999, eps=1e-7),
    "adamw": optax.adamw(1.0, b1=0.9, b2=0.999, eps=1e-7, weight_decay=0.004),
}


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"w": jax.random.normal(k1, (7, 5)), "b": jax.random.normal(k2, (5,))}


def _directions(transform, steps=4):
    params = _params()
    state, out = transform.init(params), []
    for step in range(steps):
        grads = jax.tree.map(lambda p, s=step: jnp.sin(p * (s + 1)), params)
        updates, state = transform.update(grads, state, params)
        out.append(updates)
    return out


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_direction_is_minus_the_optax_optimiser_at_unit_learning_rate(name):
    got = _directions(optax_direction(OptimizerConfig(name=name)))
    expected = _directions(KERAS_DEFAULTS[name])
    for g, e in zip(got, expected, strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, -b), g, e)  # bit for bit


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_engine_direction_initialises_and_updates_as_plain_optax(name):
    config = OptimizerConfig(name=name)
    for g, e in zip(_directions(make_direction(config)), _directions(optax_direction(config)), strict=True):
        jax.tree.map(np.testing.assert_array_equal, g, e)


def test_an_unknown_optimizer_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match="adam, adamw, rmsprop, sgd, momentum"):
        OptimizerConfig(name="lion")
