"""What a model's units and gradients look like on a fixed batch: the evidence for *why*.

``unit_probes`` takes a model, its params, an input transform and a batch, and returns
fixed-shape numbers (vmappable over a grid's models): loss, gradient norms (global and per
layer), the size of the optimiser's first step relative to the weights, logit magnitude and
softmax confidence, the fraction of examples Keras' clip silences, dead/always-on ReLUs,
saturated sigmoid/tanh units and pre-activation statistics per hidden layer.

The accepted answer's picture, in these terms: a hidden unit's hyperplane ``w.x + b = 0``
misses the data cloud when its pre-activation has the same sign on every example; for ReLU that
unit is then either dead (never positive: no gradient) or always on (purely linear).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from scalelab.losses import KERAS_EPSILON
from scalelab.train import Batch, Hypers, LossFn, global_norm

# A sigmoid unit whose output is within 1% of 0 or 1 passes < 1% of the gradient it would at 0.5.
SATURATION_MARGIN = 0.01


class UnitProbes(NamedTuple):
    """One model's numbers; ``L`` hidden layers, ``L + 1`` Dense layers."""

    loss: jax.Array  # () the training loss on the batch
    grad_norm: jax.Array  # ()
    layer_grad_norms: jax.Array  # (L+1,)
    layer_weight_norms: jax.Array  # (L+1,) kernel and bias together
    update_ratio: jax.Array  # (L+1,) ||lr * first update|| / ||weights|| per layer
    mean_abs_logit: jax.Array  # ()
    max_logit_gap: jax.Array  # () mean over examples of (max logit - second largest)
    mean_max_prob: jax.Array  # () mean max-softmax probability
    clipped_wrong_frac: jax.Array  # () true-class probability below Keras' 1e-7: zero gradient
    clipped_frac: jax.Array  # () true-class probability clipped at either end
    accuracy: jax.Array  # ()
    predicted_class_frac: jax.Array  # () share of examples given the most common prediction
    dead_frac: jax.Array  # (L,) units never positive on the batch
    always_on_frac: jax.Array  # (L,) units positive on every example
    saturated_frac: jax.Array  # (L,) (example, unit) pairs in the flat tails of sigmoid/tanh
    preact_mean: jax.Array  # (L,)
    preact_std: jax.Array  # (L,)


def hidden_preactivations(model, params, hypers: Hypers, x: jax.Array):
    """(logits, [z_1, ..., z_L]): each hidden Dense layer's output before its activation."""
    inputs = (x - hypers.shift) * hypers.scale  # as training sees them (``train.logits_fn``)
    logits, state = model.apply(params, inputs, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    zs = [inter[f"Dense_{i}"]["__call__"][0] for i in range(len(model.hidden))]
    return logits, zs


def _saturated(activation: str, z: jax.Array) -> jax.Array:
    if activation == "sigmoid":
        s = jax.nn.sigmoid(z)
        return (s < SATURATION_MARGIN) | (s > 1 - SATURATION_MARGIN)
    if activation == "tanh":
        return jnp.abs(jnp.tanh(z)) > 1 - 2 * SATURATION_MARGIN  # same gradient share as sigmoid
    return jnp.zeros(z.shape, bool)  # relu, gelu, identity do not saturate on both sides


def _layer_norms(tree) -> jax.Array:
    layers = tree["params"]
    return jnp.stack([global_norm(layers[name]) for name in sorted(layers, key=_layer_index)])


def _layer_index(name: str) -> int:
    return int(name.split("_")[-1])


def unit_probes(
    model, loss_fn: LossFn, direction: optax.GradientTransformation, params, opt_state,
    hypers: Hypers, batch: Batch,
) -> UnitProbes:  # fmt: skip
    """All probes of one model on one batch (``batch.weight`` is ignored: use real examples)."""

    def loss_of(p):
        logits, zs = hidden_preactivations(model, p, hypers, batch.x)
        return jnp.mean(loss_fn(logits, batch.y)), (logits, zs)

    (loss, (logits, zs)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, _ = direction.update(grads, opt_state, params)
    step_norms = hypers.lr * _layer_norms(updates)
    weight_norms = _layer_norms(params)

    probs = jax.nn.softmax(logits)
    true_prob = jnp.take_along_axis(probs, batch.y[:, None], axis=-1)[:, 0]
    top2 = jax.lax.top_k(logits, 2)[0]
    predictions = jnp.argmax(logits, -1)
    counts = jnp.sum(jax.nn.one_hot(predictions, logits.shape[-1]), axis=0)

    positive = [z > 0 for z in zs]
    return UnitProbes(
        loss=loss,
        grad_norm=global_norm(grads),
        layer_grad_norms=_layer_norms(grads),
        layer_weight_norms=weight_norms,
        update_ratio=step_norms / weight_norms,
        mean_abs_logit=jnp.mean(jnp.abs(logits)),
        max_logit_gap=jnp.mean(top2[:, 0] - top2[:, 1]),
        mean_max_prob=jnp.mean(jnp.max(probs, -1)),
        clipped_wrong_frac=jnp.mean(true_prob < KERAS_EPSILON),
        clipped_frac=jnp.mean((true_prob < KERAS_EPSILON) | (true_prob > 1 - KERAS_EPSILON)),
        accuracy=jnp.mean(predictions == batch.y),
        predicted_class_frac=jnp.max(counts) / logits.shape[0],
        dead_frac=jnp.stack([jnp.mean(~jnp.any(p, axis=0)) for p in positive]),
        always_on_frac=jnp.stack([jnp.mean(jnp.all(p, axis=0)) for p in positive]),
        saturated_frac=jnp.stack([jnp.mean(_saturated(model.activation, z)) for z in zs]),
        preact_mean=jnp.stack([jnp.mean(z) for z in zs]),
        preact_std=jnp.stack([jnp.std(z) for z in zs]),
    )


class Hyperplanes(NamedTuple):
    """The accepted answer's picture of one hidden layer, measured on a batch (``hyperplanes``)."""

    cut_frac: jax.Array  # () share of units whose pre-activation takes both signs over the examples
    distance: jax.Array  # (units,) |mean z| / std z: the hyperplane's distance from the data's centroid
    # along the unit's normal, in units of the data's spread along it (inf where z is constant)


def hyperplanes(z: jax.Array) -> Hyperplanes:
    """``z``: (examples, units) pre-activations ``x W + b`` of one layer.

    Unit j's hyperplane ``{x : x w_j + b_j = 0}`` *cuts the data cloud* when some example lies on
    each side (``min z < 0 < max z``). Its distance from the centroid ``μ`` is ``|μ w_j + b_j| /
    ||w_j||``; the cloud's spread along the normal is the std of ``x w_j / ||w_j||``; their ratio
    is ``|mean z_j| / std z_j``, free of ``||w_j||`` and of any scale of the inputs: dividing the
    pixels by C (with a zero bias) moves no hyperplane relative to the cloud.
    """
    cuts = jnp.any(z < 0, axis=0) & jnp.any(z > 0, axis=0)
    mean, std = jnp.mean(z, axis=0), jnp.std(z, axis=0)
    distance = jnp.where(std > 0, jnp.abs(mean) / jnp.where(std > 0, std, 1.0), jnp.inf)
    return Hyperplanes(cut_frac=jnp.mean(cuts), distance=distance)
