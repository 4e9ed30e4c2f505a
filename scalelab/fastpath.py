"""The tuned pieces of the training step: same numbers as the plain ones, faster on a CPU.

``train.step`` and ``train.masked`` are the algorithm; this module holds the two places where
the engine's step (``train.train_step``, through ``train.TUNED``) computes the same thing in a
form that XLA:CPU runs faster. A reader of the step need not learn them; ``scalelab.reference``
trains without them, and ``tests/test_reference.py`` checks that both engines agree.

* ``global_norm``: a matrix's sum of squares as a matrix-vector product on a CPU
  (``lax.platform_dependent``), instead of ``jnp.sum(jnp.square(x))``.
* ``masked_update`` with a ``SplitDirection``: the optimiser's masked new state is written first
  and the update is read off it (``from_state``), instead of optax's update computed beside the
  new state from the old one. Adam's ``from_state`` is also in Kingma & Ba's reordered form.

Each was raced against the plain form in one process (the README's Speed section); the agreement
tolerances are stated where they are tested (``tests/test_fastpath.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
    from scalelab.optim import OptimizerConfig

PyTree = Any


def global_norm(tree: PyTree) -> jax.Array:
    """``sqrt(sum of squares of every leaf)``, each matrix's sum by ``sum_of_squares``."""
    return jnp.sqrt(sum(sum_of_squares(x) for x in jax.tree.leaves(tree)))


def sum_of_squares(x: jax.Array) -> jax.Array:
    """``sum(x**2)``; on a CPU, a matrix's as its squares' product with a vector of ones.

    XLA:CPU runs ``jnp.sum(jnp.square(w))`` of a 784x128 gradient as a separate squaring pass
    and a slow reduction; as a matrix-vector product the sum runs on the matmul path, which
    measured 8-11% faster training at batch 32. Other backends fuse the plain reduction into
    one read of ``x`` (and GPUs into the optimiser's pass over the gradient), so they keep it
    (``lax.platform_dependent`` picks the form when the program is lowered).
    """
    if x.ndim < 2:
        return plain_sum_of_squares(x)
    return jax.lax.platform_dependent(x, cpu=_sum_of_squares_as_matvec, default=plain_sum_of_squares)


def plain_sum_of_squares(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(x))


def _sum_of_squares_as_matvec(x: jax.Array) -> jax.Array:
    rows = jnp.square(x).reshape(-1, x.shape[-1])  # HIGHEST: no reduced-precision passes in the dot
    return jnp.sum(jnp.dot(rows, jnp.ones(x.shape[-1], x.dtype), precision=jax.lax.Precision.HIGHEST))


class SplitDirection(NamedTuple):
    """An optax ``GradientTransformation`` whose update can also be read off its new state.

    ``init`` and ``update`` are the optax transformation's own, so a ``SplitDirection`` goes
    wherever one does (``scalelab.reference`` uses only those two). ``from_state(grads,
    new_state, params)`` returns ``update(grads, state, params)[0]`` computed from ``new_state =
    update(grads, state, params)[1]`` (tested for every optimiser: equal to float32 rounding, and
    to 1e-12 in float64).

    Why: optax's ``update`` computes the new moments and the update side by side from the *old*
    moments. Inside the compiled epoch the old moments then have two readers, and XLA:CPU copies
    both of Adam's moments every step to overwrite them in place. ``masked_update`` instead
    writes the new moments first and reads the update off them: measured 11% faster training at
    batch 32 (M = 32 models on 2 cores).
    """

    init: optax.TransformInitFn
    update: optax.TransformUpdateFn
    from_state: Callable[[optax.Updates, optax.OptState, optax.Params], optax.Updates]


def masked_update(direction: optax.GradientTransformation, grads, opt_state, params, apply: jax.Array):
    """``(updates, new optimiser state)``; the state stays as it was where ``apply`` is False.

    A ``SplitDirection`` has its update read off the masked new state, so each old moment has one
    reader and XLA overwrites it in place (see ``SplitDirection``); any other optax
    transformation gives its update alongside its new state, as ``train.plain_masked_update``.
    """
    updates, new_opt_state = direction.update(grads, opt_state, params)
    new_opt_state = jax.tree.map(lambda a, b: jnp.where(apply, a, b), new_opt_state, opt_state)
    if isinstance(direction, SplitDirection):
        updates = direction.from_state(grads, new_opt_state, params)
    return updates, new_opt_state


def split_direction(config: OptimizerConfig, transform: optax.GradientTransformation) -> SplitDirection:
    """``transform`` (``optim.optax_direction(config)``) with its update readable off its new state."""
    return SplitDirection(transform.init, transform.update, _from_state(config))


def _from_state(config: OptimizerConfig):
    """``from_state`` of each optimiser of ``optim.optax_direction``, which it must mirror."""
    if config.name == "sgd":  # optax.identity
        return lambda grads, state, params: grads
    if config.name == "momentum":  # optax.trace: the update is the new trace
        return lambda grads, state, params: state.trace
    if config.name == "rmsprop":
        eps = config.eps

        def rms_from_state(grads, state, params):  # optax.scale_by_rms: g * rsqrt(nu + eps), eps inside the root
            return jax.tree.map(lambda n, g: jax.lax.rsqrt(n + eps) * g, state.nu, grads)

        return rms_from_state
    adam_from_state = _adam_from_state(config.b1, config.b2, config.eps)
    if config.name == "adamw":
        decay = config.weight_decay

        def adamw_from_state(grads, state, params):  # optax.add_decayed_weights: u + wd * p
            return jax.tree.map(lambda u, p: u + decay * p, adam_from_state(grads, state[0], params), params)

        return adamw_from_state
    return adam_from_state


def _adam_from_state(b1: float, b2: float, eps: float):
    """Adam's update from its new state (count t, moments mu and nu), in the reordered form of
    Kingma & Ba (2015, end of Sec. 2): ``sqrt(1-b2^t)/(1-b1^t) * mu / (sqrt(nu) + eps*sqrt(1-b2^t))``.

    That is optax's ``mu_hat / (sqrt(nu_hat) + eps)`` with bias-corrected moments, rearranged
    (tested: within 3e-5 of it in float32, where both forms are within 1.4e-5 of a float64 Adam,
    and to 1e-12 in float64), but each parameter costs one division and one
    square root instead of three divisions and a root. The update is the one compute-bound pass
    of the step besides the matmuls: measured 5-6% faster training at batch 32.
    """

    def from_state(grads, state: optax.ScaleByAdamState, params=None):
        del grads, params
        root_c2 = jnp.sqrt(1 - b2**state.count)  # integer powers, as optax's bias correction
        step, eps_hat = root_c2 / (1 - b1**state.count), eps * root_c2
        return jax.tree.map(lambda m, v: step * m / (jnp.sqrt(v) + eps_hat), state.mu, state.nu)

    return from_state
