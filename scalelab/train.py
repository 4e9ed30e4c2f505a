"""One model's training, as pure functions of pytrees (the grid vmaps them).

``train_step(state, hypers, batch) -> (state, metrics)`` is the whole update; nothing in it
reads globals, clocks or files. A model that is early-stopped or diverged keeps its parameters
unchanged (masks, not branches), so it can sit inside a vmapped grid without disturbing the
other models. A non-finite loss or gradient marks the model diverged and freezes it from then on;
a non-finite loss also keeps the parameters it had before that step (see ``train_step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scalelab.optim import SplitDirection

PyTree = Any


class ModelStatus(NamedTuple):
    """Per-model masks and early-stopping state (Keras EarlyStopping semantics)."""

    stopped: jax.Array  # bool: early-stopped
    diverged: jax.Array  # bool: a loss, gradient or update became NaN/inf
    stop_epoch: jax.Array  # int32: epoch after which it stopped, -1 if it did not
    diverge_epoch: jax.Array  # int32: epoch in which it diverged, -1 if it did not
    best_loss: jax.Array  # float32: best test loss so far
    bad_epochs: jax.Array  # int32: epochs since the best test loss

    @classmethod
    def initial(cls) -> ModelStatus:
        return cls(
            stopped=jnp.array(False),
            diverged=jnp.array(False),
            stop_epoch=jnp.array(-1, jnp.int32),
            diverge_epoch=jnp.array(-1, jnp.int32),
            best_loss=jnp.array(jnp.inf, jnp.float32),
            bad_epochs=jnp.array(0, jnp.int32),
        )

    @property
    def active(self) -> jax.Array:
        return ~(self.stopped | self.diverged)


class TrainState(NamedTuple):
    params: PyTree
    opt_state: PyTree
    step: jax.Array  # int32: updates applied
    status: ModelStatus


class Hypers(NamedTuple):
    """A model's numeric settings, vmapped across the grid."""

    shift: jax.Array  # (D,) input transform: x' = (x - shift) * scale
    scale: jax.Array  # (D,)
    lr: jax.Array  # ()


class Batch(NamedTuple):
    x: jax.Array  # (B, D) float32 raw pixels (0..255)
    y: jax.Array  # (B,) int32 labels
    weight: jax.Array  # (B,) float32: 1 for real examples, 0 for padding of the last batch


class StepMetrics(NamedTuple):
    """Sums over the steps where the model trained; divided by ``count`` at the epoch's end."""

    loss_sum: jax.Array
    correct_sum: jax.Array
    examples: jax.Array
    grad_norm_sum: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls) -> StepMetrics:
        return cls(*(jnp.zeros((), jnp.float32) for _ in range(5)))


LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def init_state(model, direction: optax.GradientTransformation, key: jax.Array, input_dim: int):
    params = model.init(key, jnp.zeros((1, input_dim), jnp.float32))
    return TrainState(params, direction.init(params), jnp.array(0, jnp.int32), ModelStatus.initial())


def logits_fn(model, params: PyTree, hypers: Hypers, x: jax.Array) -> jax.Array:
    """The model applied to the transformed batch ``(x - shift) * scale``.

    Transforming the (B, D) batch costs B x D operations per model and step. Folding the
    transform into the first layer's weights instead (``W' = scale[:, None] * W``) would let a
    seed's variants share one wide GEMM, but costs passes over the D x H kernel in the forward
    and backward step, and measured 10-45% slower on the CPU at 1 to 32 models.
    """
    return model.apply(params, (x - hypers.shift) * hypers.scale)


def batch_loss(model, loss_fn: LossFn, params, hypers: Hypers, batch: Batch):
    """Weighted mean loss over the real examples of a batch; also returns the logits."""
    logits = logits_fn(model, params, hypers, batch.x)
    per_example = loss_fn(logits, batch.y)
    return jnp.sum(batch.weight * per_example) / jnp.sum(batch.weight), logits


def global_norm(tree: PyTree) -> jax.Array:
    """sqrt of the sum of squares of every leaf (optax renamed its own twice; this one stays)."""
    return jnp.sqrt(sum(_sum_of_squares(x) for x in jax.tree.leaves(tree)))


def _sum_of_squares(x: jax.Array) -> jax.Array:
    """``sum(x**2)``; on a CPU, a matrix's as its squares' product with a vector of ones.

    XLA:CPU runs ``jnp.sum(jnp.square(w))`` of a 784x128 gradient as a separate squaring pass
    and a slow reduction; as a matrix-vector product the sum runs on the matmul path, which
    measured 8-11% faster training at batch 32. Other backends fuse the plain reduction into
    one read of ``x`` (and GPUs into the optimiser's pass over the gradient), so they keep it
    (``lax.platform_dependent`` picks the form when the program is lowered).
    """
    if x.ndim < 2:
        return _plain_sum_of_squares(x)
    return jax.lax.platform_dependent(x, cpu=_sum_of_squares_as_matvec, default=_plain_sum_of_squares)


def _plain_sum_of_squares(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(x))


def _sum_of_squares_as_matvec(x: jax.Array) -> jax.Array:
    rows = jnp.square(x).reshape(-1, x.shape[-1])  # HIGHEST: no reduced-precision passes in the dot
    return jnp.sum(jnp.dot(rows, jnp.ones(x.shape[-1], x.dtype), precision=jax.lax.Precision.HIGHEST))


def _select(flag: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def masked_update(direction: optax.GradientTransformation, grads, opt_state, params, apply: jax.Array):
    """``(updates, new optimiser state)``; the state stays as it was where ``apply`` is False.

    A ``SplitDirection`` (``scalelab.optim``) has its update read off the masked new state, so
    each old moment has one reader and XLA overwrites it in place (see ``SplitDirection``); any
    other optax transformation gives its update alongside its new state, as usual.
    """
    updates, new_opt_state = direction.update(grads, opt_state, params)
    new_opt_state = _select(apply, new_opt_state, opt_state)
    if isinstance(direction, SplitDirection):
        updates = direction.from_state(grads, new_opt_state, params)
    return updates, new_opt_state


def train_step(
    model,
    loss_fn: LossFn,
    direction: optax.GradientTransformation,
    state: TrainState,
    hypers: Hypers,
    batch: Batch,
    epoch: jax.Array,
) -> tuple[TrainState, StepMetrics]:
    """One optimiser update for one model; a no-op for stopped or diverged models."""
    grad_fn = jax.value_and_grad(lambda p: batch_loss(model, loss_fn, p, hypers, batch), has_aux=True)
    (loss, logits), grads = grad_fn(state.params)
    grad_norm = global_norm(grads)

    active = state.status.active
    # The update is gated on values known before the backward pass (status, forward loss), so the
    # masked Adam update does not wait for the gradient-norm reduction, which XLA:CPU neither
    # fuses into the update nor vectorises well. Gating on the gradient norm as well serialised
    # that reduction before the update: measured at -25% throughput. A gradient that overflows while the loss
    # is finite (rare) therefore still updates the parameters once; the model is marked diverged
    # at that step and frozen from then on, so it never disturbs the others.
    apply = active & jnp.isfinite(loss)
    updates, new_opt_state = masked_update(direction, grads, state.opt_state, state.params, apply)
    new_params = jax.tree.map(lambda p, u: p - hypers.lr * u, state.params, updates)
    newly_diverged = active & ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    status = state.status._replace(
        diverged=state.status.diverged | newly_diverged,
        diverge_epoch=jnp.where(newly_diverged, epoch, state.status.diverge_epoch),
    )
    new_state = TrainState(
        params=_select(apply, new_params, state.params),
        opt_state=new_opt_state,
        step=state.step + apply.astype(jnp.int32),
        status=status,
    )
    # The diverging step's loss is counted, so that epoch's mean shows the NaN/inf.
    counted = active.astype(jnp.float32)
    real = jnp.sum(batch.weight)
    correct = jnp.sum(batch.weight * (jnp.argmax(logits, -1) == batch.y))
    metrics = StepMetrics(
        loss_sum=counted * loss * real,
        correct_sum=counted * correct,
        examples=counted * real,
        grad_norm_sum=counted * grad_norm,
        count=counted,
    )
    return new_state, metrics


def eval_batch(model, loss_fn: LossFn, params, hypers: Hypers, batch: Batch) -> jax.Array:
    """``[loss sum, correct count]`` over the real examples of a batch."""
    logits = logits_fn(model, params, hypers, batch.x)
    loss_sum = jnp.sum(batch.weight * loss_fn(logits, batch.y))
    correct = jnp.sum(batch.weight * (jnp.argmax(logits, -1) == batch.y))
    return jnp.stack([loss_sum, correct])


def end_of_epoch(status: ModelStatus, test_loss: jax.Array, epoch: jax.Array, patience: int):
    """Keras ``EarlyStopping(monitor='val_loss', patience)`` as masks; ``patience=0`` is off.

    Also marks a model diverged when its test loss is not finite (its parameters may be finite
    while its logits overflow).
    """
    active = status.active
    nonfinite = active & ~jnp.isfinite(test_loss)
    improved = test_loss < status.best_loss
    best = jnp.where(active & improved, test_loss, status.best_loss)
    bad = jnp.where(active, jnp.where(improved, 0, status.bad_epochs + 1), status.bad_epochs)
    stop_now = active & ~nonfinite & (patience > 0) & (bad >= patience)
    return status._replace(
        stopped=status.stopped | stop_now,
        stop_epoch=jnp.where(stop_now, epoch, status.stop_epoch),
        diverged=status.diverged | nonfinite,
        diverge_epoch=jnp.where(nonfinite, epoch, status.diverge_epoch),
        best_loss=best,
        bad_epochs=bad,
    )
