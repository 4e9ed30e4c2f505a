"""Optimisers through optax, with the learning rate kept out of the transformation.

``make_direction`` returns an optax ``GradientTransformation`` whose output is the update per
unit learning rate; the training step subtracts ``lr * direction``. Why: the learning rate is a
*vmapped* number (one per model of a grid), while the optimiser's kind is static (it changes
the compiled program). Defaults follow Keras, since the questions we reproduce used Keras.

``optax_direction`` is the plain optax transformation; ``make_direction`` (the engine's) is the
same transformation as a ``scalelab.fastpath.SplitDirection``, whose ``from_state`` reads the
update off the optimiser's *new* state: a CPU tuning the step's reader need not learn (see
``scalelab.fastpath`` for why). ``SplitDirection`` is re-exported here, where it always lived.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
import optax

from scalelab.errors import UsageError
from scalelab.fastpath import SplitDirection, split_direction

DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "sgd": 1e-2, "momentum": 1e-2}
OPTIMIZERS = tuple(DEFAULT_LR)


@dataclass(frozen=True)
class OptimizerConfig:
    """Static optimiser settings (Keras defaults). The learning rate is a grid axis instead."""

    name: str = "adam"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-7  # Keras' epsilon; optax's own default is 1e-8
    momentum: float = 0.9
    rho: float = 0.9  # RMSprop's decay
    weight_decay: float = 0.004  # Keras AdamW's default

    def __post_init__(self):
        if self.name not in DEFAULT_LR:
            raise UsageError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name, low, high in (("b1", 0, 1), ("b2", 0, 1), ("momentum", 0, 1), ("rho", 0, 1)):
            value = getattr(self, name)
            if not _traced(value) and (not _number(value) or not low <= value < high):
                raise UsageError(f"--{name} {value!r} must be a number in [{low}, {high})")
        if not _traced(self.eps) and (not _number(self.eps) or not 0 < self.eps < float("inf")):
            raise UsageError(f"--eps {self.eps!r} must be a finite number > 0")
        wd = self.weight_decay
        if not _traced(wd) and (not _number(wd) or not 0 <= wd < float("inf")):
            raise UsageError(f"--weight-decay {wd!r} must be a finite number >= 0")


def _number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _traced(value) -> bool:
    # A JAX value (a tracer, when an experiment vmaps over eps): the boundary's checks do not apply.
    return isinstance(value, jax.Array)


def optax_direction(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optimiser without its learning rate, as plain optax (``adam`` = ``scale_by_adam``, Kingma & Ba 2015).

    Adam here bias-corrects both moments and adds ``eps`` outside the square root, as optax
    does; Keras adds an un-corrected ``eps`` (Kingma & Ba's "epsilon hat"), a difference that
    only matters while ``sqrt(v)`` is near ``eps``.
    """
    if config.name == "sgd":
        return optax.identity()
    if config.name == "momentum":
        # Keras SGD(momentum=m): v <- m v - lr g; with a constant lr that is -lr * trace(g).
        return optax.trace(decay=config.momentum)
    if config.name == "rmsprop":
        return optax.scale_by_rms(decay=config.rho, eps=config.eps)
    adam = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
    if config.name == "adamw":
        return optax.chain(adam, optax.add_decayed_weights(config.weight_decay))
    return adam


def make_direction(config: OptimizerConfig) -> SplitDirection:
    """The engine's direction: ``optax_direction(config)`` whose update can also be read off its
    new state (``scalelab.fastpath``, a CPU tuning; ``init`` and ``update`` are optax's own)."""
    return split_direction(config, optax_direction(config))
