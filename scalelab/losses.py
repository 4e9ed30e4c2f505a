"""Per-example losses on logits; the mean over a batch is taken by the caller.

``keras-ce`` reproduces what Keras computes for a softmax output layer with
``(sparse_)categorical_crossentropy``: probabilities are clipped to [1e-7, 1 - 1e-7] before the
log. That clip is why raw pixels give a loss near 13-14.5 (``-log 1e-7 = 16.1`` for every
confidently wrong example) instead of the hundreds the exact cross-entropy gives, and why those
examples stop producing gradients at all: the clip's derivative is zero outside its range.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from scalelab.errors import UsageError

KERAS_EPSILON = 1e-7  # keras.backend.epsilon()


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Exact ``-log softmax(logits)[label]``, computed stably from logits."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def keras_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Keras' clipped cross-entropy: ``-log clip(softmax(logits), eps, 1 - eps)[label]``."""
    probs = jax.nn.softmax(logits)
    true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    return -jnp.log(jnp.clip(true_prob, KERAS_EPSILON, 1.0 - KERAS_EPSILON))


def softmax_mse(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Keras ``mean_squared_error`` between the softmax output and the one-hot label."""
    probs = jax.nn.softmax(logits)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
    return jnp.mean(jnp.square(probs - one_hot), axis=-1)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "ce": softmax_cross_entropy,
    "keras-ce": keras_cross_entropy,
    "mse": softmax_mse,
}


def get_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if name not in LOSSES:
        raise UsageError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
