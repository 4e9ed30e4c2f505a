"""Unit and gradient probes against hand-built cases whose answers are known."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalelab.losses import keras_cross_entropy
from scalelab.models import make_model
from scalelab.probes import unit_probes
from scalelab.train import Batch, Hypers


def _setup(activation="relu", hidden=(6, 5)):
    model = make_model(hidden, 4, activation, "glorot-uniform")
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 3)))
    rng = np.random.default_rng(0)
    batch = Batch(
        x=jnp.asarray(rng.integers(0, 256, (20, 3)), jnp.float32),
        y=jnp.asarray(rng.integers(0, 4, 20), jnp.int32),
        weight=jnp.ones(20),
    )
    return model, params, batch


def _identity(lr=1e-3):
    return Hypers(shift=jnp.zeros(3), scale=jnp.ones(3), lr=jnp.float32(lr))


def _probe(model, params, batch, hypers=None, direction=None):
    direction = direction or optax.scale_by_adam(eps=1e-7)
    probe = jax.jit(unit_probes, static_argnums=(0, 1, 2))
    return probe(model, keras_cross_entropy, direction, params, direction.init(params), hypers or _identity(), batch)


def _set_bias(params, layer, value):
    layers = dict(params["params"])
    layers[layer] = {**layers[layer], "bias": jnp.full_like(layers[layer]["bias"], value)}
    return {"params": layers}


def test_units_whose_hyperplanes_miss_the_data_are_dead_or_always_on():
    model, params, batch = _setup()
    dead = _probe(model, _set_bias(params, "Dense_0", -1e4), batch)
    on = _probe(model, _set_bias(params, "Dense_0", 1e4), batch)
    assert float(dead.dead_frac[0]) == 1.0 and float(dead.always_on_frac[0]) == 0.0
    assert float(on.always_on_frac[0]) == 1.0 and float(on.dead_frac[0]) == 0.0


def test_dead_fraction_counts_units_never_positive_by_hand():
    model, params, batch = _setup()
    p = _probe(model, params, batch, hypers=_identity()._replace(shift=jnp.full(3, 100.0), scale=jnp.full(3, 0.02)))
    z0 = ((batch.x - 100.0) * 0.02) @ params["params"]["Dense_0"]["kernel"]
    np.testing.assert_allclose(p.dead_frac[0], np.mean(~np.any(np.asarray(z0) > 0, axis=0)))
    np.testing.assert_allclose(p.preact_std[0], np.std(np.asarray(z0)), rtol=1e-5)


def test_a_confidently_wrong_model_has_every_example_clipped_and_no_gradient():
    model, params, batch = _setup()
    layers = dict(params["params"])
    wrong = (batch.y[0] + 1) % 4
    bias = jnp.zeros(4).at[wrong].set(1e3)
    layers["Dense_2"] = {"kernel": jnp.zeros_like(layers["Dense_2"]["kernel"]), "bias": bias}
    batch = batch._replace(y=jnp.full(20, batch.y[0]))
    p = _probe(model, {"params": layers}, batch)
    assert float(p.clipped_wrong_frac) == 1.0 and float(p.clipped_frac) == 1.0
    assert float(p.grad_norm) == 0.0 and float(p.predicted_class_frac) == 1.0
    assert float(p.mean_max_prob) == pytest.approx(1.0)


def test_adams_first_step_has_the_same_size_whatever_the_gradient_scale():
    # Adam's first update is g / (|g| + eps) ~ sign(g): its norm is lr * sqrt(#params with
    # non-zero gradient), independent of how large the gradients are — so a large input scale
    # does not shrink Adam's steps on the first layer.
    model, params, batch = _setup(hidden=(6,))
    p = _probe(model, params, batch, hypers=_identity(lr=1e-3))
    grads = jax.grad(lambda q: jnp.mean(keras_cross_entropy(model.apply(q, batch.x), batch.y)))(params)
    first = grads["params"]["Dense_0"]
    nonzero = sum(int(np.sum(np.abs(np.asarray(g)) > 1e-4)) for g in jax.tree.leaves(first))
    weight_norm = np.sqrt(sum(np.sum(np.square(np.asarray(w))) for w in jax.tree.leaves(params["params"]["Dense_0"])))
    np.testing.assert_allclose(p.update_ratio[0], 1e-3 * np.sqrt(nonzero) / weight_norm, rtol=2e-2)


def test_sigmoid_units_driven_hard_are_saturated():
    model, params, batch = _setup(activation="sigmoid")
    assert float(_probe(model, _set_bias(params, "Dense_0", 1e4), batch).saturated_frac[0]) == 1.0
    calm = _probe(model, params, batch, hypers=_identity()._replace(scale=jnp.full(3, 1e-4)))
    assert float(calm.saturated_frac[0]) == 0.0


def test_vmapped_probes_equal_per_model_probes():
    model, params, batch = _setup()
    direction = optax.scale_by_adam(eps=1e-7)
    scales = jnp.array([1.0, 1 / 255, 1e-3])
    stacked = Hypers(shift=jnp.zeros((3, 3)), scale=scales[:, None] * jnp.ones((3, 3)), lr=jnp.full(3, 1e-3))
    batched = jax.jit(jax.vmap(lambda h: unit_probes(model, keras_cross_entropy, direction, params,
                                             direction.init(params), h, batch)))(stacked)  # fmt: skip
    for i in range(3):
        single = _probe(model, params, batch, hypers=jax.tree.map(lambda a, i=i: a[i], stacked))
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-7)


def test_hyperplanes_count_units_with_both_signs_and_measure_the_centroid_distance():
    from scalelab.probes import hyperplanes

    # unit 0 cuts (-1, 1, 3): mean 1, std sqrt(8/3); unit 1 is positive everywhere; unit 2 constant 0.
    z = jnp.asarray([[-1.0, 1.0, 0.0], [1.0, 2.0, 0.0], [3.0, 3.0, 0.0]])
    h = hyperplanes(z)
    assert float(h.cut_frac) == pytest.approx(1 / 3)
    np.testing.assert_allclose(np.asarray(h.distance[:2]), [1 / np.sqrt(8 / 3), 2 / np.sqrt(2 / 3)], rtol=1e-6)
    assert np.isinf(np.asarray(h.distance[2]))


def test_hyperplanes_do_not_move_when_the_inputs_are_divided():
    from scalelab.probes import hyperplanes

    rng = np.random.default_rng(0)
    x, w = rng.uniform(0, 255, (64, 10)), rng.normal(size=(10, 7))
    raw, small = hyperplanes(jnp.asarray(x @ w)), hyperplanes(jnp.asarray((x / 255) @ w))
    assert float(raw.cut_frac) == float(small.cut_frac)
    np.testing.assert_allclose(np.asarray(raw.distance), np.asarray(small.distance), rtol=1e-5)
