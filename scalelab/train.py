"""One model's training, as pure functions of pytrees (the grid vmaps them).

Read in this order:

1. ``step(model, loss_fn, direction, params, opt_state, hypers, batch)``: the plain step. The
   loss and its gradients (``loss_and_grads``), the optax update, ``params - lr * update``
   (``descend``; the lr is a vmapped number, see ``scalelab.optim``).
2. ``masked(model, loss_fn, direction, state, hypers, batch, epoch)``: the same step with the
   status masks that let a model sit inside a vmapped grid. A model that is early-stopped or
   diverged keeps its parameters and optimiser state (masks, not branches), so it never
   disturbs the others; a non-finite loss or gradient marks the model diverged and freezes it
   from then on; a non-finite loss also keeps the parameters it had before that step.
3. ``train_step(model, loss_fn, direction, state, hypers, batch, epoch) -> (state, metrics)``:
   the engine's step, ``masked`` with the two pieces that have a CPU-tuned form
   (``TUNED``: ``scalelab.fastpath``) in place of the plain ones (``PLAIN``).

Nothing here reads globals, clocks or files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

# The engine's tuned forms; public here too, where probes, analysis and tests have always found them.
from scalelab.fastpath import global_norm, masked_update

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
    # Numeric optimiser axes, where the grid varies them; None: the optimiser's own (``Program.direction_for``).
    eps: jax.Array | None = None  # () Adam/RMSprop epsilon
    weight_decay: jax.Array | None = None  # () AdamW's decoupled weight decay


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
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, which nothing here calls

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


def loss_and_grads(model, loss_fn: LossFn, params, hypers: Hypers, batch: Batch):
    """``((loss, logits), grads)``: ``batch_loss`` (a scalar and the (B, C) logits) and d loss / d params."""
    return jax.value_and_grad(lambda p: batch_loss(model, loss_fn, p, hypers, batch), has_aux=True)(params)


def descend(params, updates, lr: jax.Array):
    """``params - lr * updates``: a direction of ``scalelab.optim`` is the update per unit lr."""
    return jax.tree.map(lambda p, u: p - lr * u, params, updates)


def step_metrics(counted: jax.Array, loss, logits, grad_norm, batch: Batch) -> StepMetrics:
    """One step's sums, all multiplied by ``counted`` (1.0, or 0.0 for a frozen model)."""
    real = jnp.sum(batch.weight)
    correct = jnp.sum(batch.weight * (jnp.argmax(logits, -1) == batch.y))
    return StepMetrics(
        loss_sum=counted * loss * real,
        correct_sum=counted * correct,
        examples=counted * real,
        grad_norm_sum=counted * grad_norm,
        count=counted,
    )


def plain_global_norm(tree: PyTree) -> jax.Array:
    """``sqrt(sum of x**2 over every leaf)``, as written (``global_norm`` is the engine's)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def step(
    model, loss_fn: LossFn, direction: optax.GradientTransformation, params, opt_state, hypers: Hypers, batch: Batch
):
    """The plain training step for one model: ``(params, opt_state, metrics)`` after one update.

    ``batch``: x (B, D) raw pixels, y (B,), weight (B,); ``hypers``: shift (D,), scale (D,), lr ();
    ``direction``: any optax transformation (``scalelab.optim``). The metrics are one
    ``StepMetrics`` with ``count`` 1. ``masked`` is this step for a model in a grid.
    """
    (loss, logits), grads = loss_and_grads(model, loss_fn, params, hypers, batch)
    grad_norm = plain_global_norm(grads)
    updates, new_opt_state = direction.update(grads, opt_state, params)
    new_params = descend(params, updates, hypers.lr)
    return new_params, new_opt_state, step_metrics(jnp.float32(1), loss, logits, grad_norm, batch)


def plain_masked_update(direction: optax.GradientTransformation, grads, opt_state, params, apply: jax.Array):
    """``(updates, new optimiser state)`` of optax's update; the state stays where ``apply`` is False.

    The plain form of ``masked_update`` (``scalelab.fastpath``): the update comes from optax
    alongside the new state, and a ``SplitDirection``'s ``from_state`` is not used.
    """
    updates, new_opt_state = direction.update(grads, opt_state, params)
    return updates, _select(apply, new_opt_state, opt_state)


def _select(flag: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


class Kernels(NamedTuple):
    """The two pieces of ``masked`` that have a tuned form; ``PLAIN`` and ``TUNED`` give the same
    numbers to float32 rounding (``tests/test_reference.py``)."""

    global_norm: Callable[[PyTree], jax.Array]
    masked_update: Callable[..., tuple[PyTree, PyTree]]  # (direction, grads, opt_state, params, apply)


PLAIN = Kernels(global_norm=plain_global_norm, masked_update=plain_masked_update)
TUNED = Kernels(global_norm=global_norm, masked_update=masked_update)  # the engine's: see scalelab.fastpath


def masked(
    model,
    loss_fn: LossFn,
    direction: optax.GradientTransformation,
    state: TrainState,
    hypers: Hypers,
    batch: Batch,
    epoch: jax.Array,
    kernels: Kernels = PLAIN,
) -> tuple[TrainState, StepMetrics]:
    """``step`` with the status masks: a no-op for stopped or diverged models; marks divergence.

    ``state``: one model's ``TrainState``; ``epoch``: int32 (), recorded as ``diverge_epoch``.
    For an active model with a finite loss, ``masked(..., kernels=PLAIN)`` computes what
    ``step`` does (tested bit for bit); ``kernels`` picks the gradient norm and masked optimiser
    update (``TUNED`` in ``train_step``).
    """
    (loss, logits), grads = loss_and_grads(model, loss_fn, state.params, hypers, batch)
    grad_norm = kernels.global_norm(grads)

    active = state.status.active
    # The update is gated on values known before the backward pass (status, forward loss), so the
    # masked Adam update does not wait for the gradient-norm reduction, which XLA:CPU neither
    # fuses into the update nor vectorises well. Gating on the gradient norm as well serialised
    # that reduction before the update: measured at -25% throughput. A gradient that overflows while the loss
    # is finite (rare) therefore still updates the parameters once; the model is marked diverged
    # at that step and frozen from then on, so it never disturbs the others.
    apply = active & jnp.isfinite(loss)
    updates, new_opt_state = kernels.masked_update(direction, grads, state.opt_state, state.params, apply)
    new_params = descend(state.params, updates, hypers.lr)
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
    return new_state, step_metrics(active.astype(jnp.float32), loss, logits, grad_norm, batch)


def train_step(
    model,
    loss_fn: LossFn,
    direction: optax.GradientTransformation,
    state: TrainState,
    hypers: Hypers,
    batch: Batch,
    epoch: jax.Array,
) -> tuple[TrainState, StepMetrics]:
    """The engine's step for one model: ``masked`` with the CPU-tuned kernels (``TUNED``).

    A no-op for stopped or diverged models. ``scalelab.grid`` vmaps it over the model axis.
    """
    return masked(model, loss_fn, direction, state, hypers, batch, epoch, kernels=TUNED)


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
