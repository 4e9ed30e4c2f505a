"""The Keras-shaped MLP of the two posts, as a Flax module.

``MLP(hidden=(128,))`` is Flatten -> Dense 128 -> activation -> Dense 10 (logits; the softmax
lives in the loss). Parameters use Flax's layout, ``{'params': {'Dense_0': {'kernel': (in, out),
'bias': (out,)}, ...}}``, so saved ``.npz`` files can be read by other tools.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalelab.errors import UsageError

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}

# Keras' Dense default is glorot_uniform with zero biases; the others are the usual alternatives.
INITIALIZERS = {
    "glorot-uniform": nn.initializers.glorot_uniform(),
    "he-normal": nn.initializers.he_normal(),
    "lecun-normal": nn.initializers.lecun_normal(),
}


class MLP(nn.Module):
    """Fully connected classifier: hidden Dense layers with one activation, then logits."""

    hidden: Sequence[int] = (128,)
    num_classes: int = 10
    activation: str = "relu"
    kernel_init: str = "glorot-uniform"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        act = ACTIVATIONS[self.activation]
        init = INITIALIZERS[self.kernel_init]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=init, bias_init=nn.initializers.zeros)(x))
        return nn.Dense(self.num_classes, kernel_init=init, bias_init=nn.initializers.zeros)(x)


def make_model(hidden: Sequence[int], num_classes: int, activation: str, kernel_init: str) -> MLP:
    """Builds an MLP after checking names, so a typo is a clear error and not a KeyError."""
    if activation not in ACTIVATIONS:
        raise UsageError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if kernel_init not in INITIALIZERS:
        raise UsageError(f"unknown initialiser {kernel_init!r}; choose one of {', '.join(INITIALIZERS)}")
    if not hidden or any(w <= 0 for w in hidden):
        raise UsageError(f"hidden widths {tuple(hidden)} must be positive integers, e.g. --hidden 128,128")
    return MLP(tuple(hidden), num_classes, activation, kernel_init)


def count_params(model: MLP, input_dim: int) -> int:
    """Number of parameters of ``model`` on ``input_dim`` inputs (shapes only, nothing computed)."""
    leaves = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, input_dim))))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(leaves))
