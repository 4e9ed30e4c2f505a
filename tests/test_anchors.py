"""The PyHessian anchor's references: the exact trace of a ReLU MLP's cross-entropy Hessian."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.bench import anchors
from scalelab.losses import get_loss
from scalelab.models import make_model


def test_the_closed_form_trace_equals_a_dense_float64_hessians_trace():
    with jax.enable_x64(True):
        model = make_model((6,), 4, "relu", "glorot-uniform")
        x = jax.random.normal(jax.random.PRNGKey(1), (9, 5), jnp.float64)
        y = jnp.arange(9) % 4
        params = jax.tree.map(lambda a: a.astype(jnp.float64) + 0.1, model.init(jax.random.PRNGKey(0), x))
        flat, unravel = ravel_pytree(params)

        def loss(v):
            return jnp.mean(get_loss("ce")(model.apply(unravel(v), x), y))

        dense = jnp.trace(jax.hessian(loss)(flat))
        np.testing.assert_allclose(anchors.exact_relu_trace(params, x), dense, rtol=1e-12)
        assert abs(float(dense)) > 1e-3  # a trace worth comparing


def test_without_torch_the_anchor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyhessian", None)  # import pyhessian now raises ImportError
    result = anchors.pyhessian_bench({"anchor_models": 2, "pyhessian_models": 1}, dataset=None)
    assert result == {"available": False, "why": anchors.NOT_INSTALLED["why"]} and "make bench-anchors" in result["why"]
