"""Measurements taken on every model of a grid while it trains: the evidence for *why*.

One compiled call measures all models of a chunk on the same fixed examples (the first ``N``
training examples) with the same Lanczos start vector and probes, so differences between input
scales are not probe noise: the unit probes (``probes.unit_probes``), the Hessian of the
training loss (top/bottom eigenvalues with Ritz residuals, trace), each layer's diagonal block,
and, for Adam, the preconditioned sharpness against its stability threshold.

The Hessian is that of the loss the optimiser follows (for ``keras-ce``, with Keras' clip, whose
flat regions have zero curvature): the curvature that decides whether a step is stable.

A diverged model is measured on zero parameters inside the vmapped call, so no NaN/inf ever
enters the Krylov loops; its numbers are then discarded and its row says why (``skipped``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scalelab import curvature as curv
from scalelab.config import CurvatureConfig
from scalelab.optim import OptimizerConfig
from scalelab.probes import UnitProbes, unit_probes
from scalelab.schema import Axis, axis_names
from scalelab.train import Batch, Hypers, TrainState, batch_loss

ADAM_LIKE = ("adam", "adamw")
HVP_CHUNK = 512  # examples per HVP chunk: bounds activation memory for --curvature-examples 10000+


class Measurement(NamedTuple):
    """One model's numbers at one point of training (vmapping adds the (S, V) model axes)."""

    probes: UnitProbes
    curvature: curv.CurvatureSummary
    adam_sharpness: jax.Array  # () top eigenvalue of P^-1 H (nan at step 0 or without Adam)
    adam_residual: jax.Array  # ()


def hvp_fn(model, loss_fn, hypers: Hypers, batch: Batch):
    """``(params, v) -> H v`` of the mean training loss on ``batch`` (``train.batch_loss``), in
    ``HVP_CHUNK``-example chunks: what every measurement of a run, and ``analysis.curvature``, uses."""

    def loss_on(params, chunk: Batch):
        return batch_loss(model, loss_fn, params, hypers, chunk)[0]

    return curv.make_chunked_hvp(loss_on, batch, min(HVP_CHUNK, batch.x.shape[0]))


def _without_divergence(state: TrainState) -> TrainState:
    """Zero parameters and optimiser state for a diverged model (finite, and discarded later)."""
    return jax.tree.map(lambda x: jnp.where(state.status.diverged, jnp.zeros_like(x), x), state)


def measure_model(
    program, settings: CurvatureConfig, optimizer: OptimizerConfig, state: TrainState, hypers: Hypers,
    batch: Batch, key: jax.Array, after_updates: jax.Array | bool = True,
) -> Measurement:  # fmt: skip
    """All measurements of one model; ``key`` fixes the start vector and probes (share it).

    ``after_updates``: False at init, where Adam's preconditioner is undefined (its bias correction
    divides by ``1 - b2^0``) and its sharpness is NaN without being computed."""
    state = _without_divergence(state)
    params = state.params
    probes = unit_probes(
        program.model, program.loss_fn, program.direction_for(hypers), params, state.opt_state, hypers, batch
    )
    hvp = hvp_fn(program.model, program.loss_fn, hypers, batch)
    summary = curv.curvature_summary(
        hvp, params, key, top_k=settings.top_k, num_lanczos_steps=settings.lanczos_steps,
        num_trace_probes=settings.trace_probes,
    )  # fmt: skip
    if settings.trace_probes < 2:  # no estimate (and no standard error) from fewer than two probes
        nan = lambda t: t._replace(trace=jnp.full_like(t.trace, jnp.nan), trace_stderr=jnp.full_like(t.trace, jnp.nan))  # noqa: E731
        summary = curv.CurvatureSummary(nan(summary.hessian), nan(summary.blocks))
    undefined = (jnp.array(jnp.nan, jnp.float32), jnp.array(jnp.nan, jnp.float32))
    sharpness, residual = undefined
    if optimizer.name in ADAM_LIKE:

        def adam_sharpness(_):
            n = sum(x.size for x in jax.tree.leaves(params))
            v0 = jax.random.normal(jax.random.fold_in(key, 1), (n,), jnp.float32)
            eps: Any = optimizer.eps if hypers.eps is None else hypers.eps  # the model's own on an eps axis
            adam = curv.adam_preconditioned_sharpness(
                hvp, params, state.opt_state, v0, settings.lanczos_steps, include_bias_correction=True,
                k=1, b1=optimizer.b1, b2=optimizer.b2, eps=eps,
            )  # fmt: skip
            # Adam's preconditioner needs at least one update (its bias correction divides by 1 - b2^t).
            started = curv.find_adam_state(state.opt_state).count > 0
            return jnp.where(started, adam.values[0], jnp.nan), jnp.where(started, adam.residuals[0], jnp.nan)

        # One flag for the whole grid (unbatched), so under vmap this stays a branch: at init the
        # Lanczos run (a quarter of the measurement's HVPs) is skipped, not computed and discarded.
        sharpness, residual = lax.cond(after_updates, adam_sharpness, lambda _: undefined, None)
    return Measurement(probes, summary, sharpness, residual)


def measure_grid(
    program, settings: CurvatureConfig, optimizer: OptimizerConfig, states, hypers, batch, key, block: int = 0,
    after_updates: jax.Array | bool = True,
):  # fmt: skip
    """``measure_model`` for every model of an (S, V) grid; hypers (V, ...), batch, key and
    ``after_updates`` shared. ``block`` (static): models measured together (``over_models``); 0, all
    of them at once."""
    one = lambda st, h: measure_model(program, settings, optimizer, st, h, batch, key, after_updates)  # noqa: E731
    return over_models(one, states, hypers, block)


def density_grid(program, settings: CurvatureConfig, states, hypers, batch, key, block: int = 0):
    """SLQ nodes and weights of every model's Hessian, each (S, V, probes, steps); ``block`` as in
    ``measure_grid``."""

    def one(state, h):
        params = _without_divergence(state).params
        matvec = curv.flat_matvec(hvp_fn(program.model, program.loss_fn, h, batch), params)
        n = sum(x.size for x in jax.tree.leaves(params))
        steps = min(settings.density_steps, n)
        density = curv.slq_density(matvec, key, n, settings.density_probes, steps, jnp.zeros(1), 1.0, jnp.float32)
        return density.nodes, density.weights

    return over_models(one, states, hypers, block)


def over_models(fn, states, hypers, block: int):
    """``fn(state, hypers)`` for every model of an (S, V) grid (hypers (V, ...)), as (S, V, ...).

    ``block`` 0 (or at least S * V): one vmap over all models. Otherwise ``block`` models at a time
    (``lax.map``), a CPU tuning (``measure_block``): the same numbers to float32 rounding."""
    num_seeds, num_variants = jax.tree.leaves(states)[0].shape[:2]
    if block <= 0 or block >= num_seeds * num_variants:
        return jax.vmap(jax.vmap(fn, in_axes=(0, 0)), in_axes=(0, None))(states, hypers)
    flat = lambda a: a.reshape(num_seeds * num_variants, *a.shape[2:])  # noqa: E731
    per_model = jax.tree.map(lambda h: flat(jnp.broadcast_to(h, (num_seeds, *h.shape))), hypers)
    out = lax.map(lambda args: fn(*args), (jax.tree.map(flat, states), per_model), batch_size=block)
    return jax.tree.map(lambda a: a.reshape(num_seeds, num_variants, *a.shape[1:]), out)


# How many models a CPU measures at a time. Every Lanczos step passes over its Krylov basis
# (steps x parameters floats) twice per Gram-Schmidt pass (a product with the basis and one with
# its transpose; a second pass where the first cancelled). Vmapped over M models that is M bases: on
# the posts' network 6.5 MB a model at 16 steps, so past a few models they leave the 32 MiB L3 and
# every pass streams from memory. Measured with two passes every step, on the 2-core EPYC (posts'
# network, 40 models, 256 examples): all at once 7.9 s, one model at a time 4.1 s; the density
# 12.1 s against 5.1 s; on 2048 examples, where the HVPs dominate, 1.12x. A block's bases stay
# within the budget the training blocks use (planning).
CPU_MEASURE_BLOCK_BYTES = 4 * 2**20


def measure_block(settings: CurvatureConfig, num_params: int, platform: str) -> int:
    """Models measured together: all of them (0) on an accelerator, where vmapping is the gain; on a
    CPU as many as keep their Krylov bases within ``CPU_MEASURE_BLOCK_BYTES`` (at least one)."""
    if platform != "cpu":
        return 0
    basis_bytes = max(settings.lanczos_steps, settings.density_steps) * num_params * 4
    return max(1, CPU_MEASURE_BLOCK_BYTES // basis_bytes)


def measurement_batch(train_x: np.ndarray | jax.Array, train_y: np.ndarray | jax.Array, examples: int) -> Batch:
    """The fixed examples every measurement uses: the first ``examples`` training examples."""
    n = min(examples, len(train_x))
    return Batch(x=jnp.asarray(train_x[:n], jnp.float32), y=jnp.asarray(train_y[:n]), weight=jnp.ones(n, jnp.float32))


def measurement_key(step: int) -> jax.Array:
    """The start vector and probes of the measurement at ``step``: the same for every model and run."""
    return jax.random.fold_in(jax.random.PRNGKey(20240), step)


# ---------------------------------------------------------------------------------------------
# Rows of curvature.csv
# ---------------------------------------------------------------------------------------------

POSITION_COLUMNS = ("epoch", "step", "skipped")  # after the model and its axes (scalelab.schema)
SCALAR_PROBES = (
    "loss", "accuracy", "grad_norm", "mean_abs_logit", "max_logit_gap", "mean_max_prob", "clipped_wrong_frac",
    "clipped_frac", "predicted_class_frac",
)  # fmt: skip
LAYER_PROBES = (
    ("grad_norm", "layer_grad_norms"),
    ("weight_norm", "layer_weight_norms"),
    ("update_ratio", "update_ratio"),
)
HIDDEN_PROBES = ("dead_frac", "always_on_frac", "saturated_frac", "preact_mean", "preact_std")


def curvature_columns(axes: Sequence[Axis], num_hidden: int, top_k: int, trace: bool = True) -> list[str]:
    """The columns of curvature.csv for a grid's ``axes``, ``num_hidden`` hidden layers and ``top_k``
    eigenvalues; ``trace``: with the Hutchinson trace columns (``trace``, ``trace_stderr``, ``layer_i_trace``)."""
    columns = ["model", *axis_names(axes), *POSITION_COLUMNS, *SCALAR_PROBES]
    for i in range(num_hidden + 1):
        columns += [f"{name}_{i}" for name, _ in LAYER_PROBES] + [f"layer_{i}_top_eig"]
        columns += [f"layer_{i}_trace"] if trace else []
    for j in range(num_hidden):
        columns += [f"{name}_{j}" for name in HIDDEN_PROBES]
    columns += [f"top_eig_{r + 1}" for r in range(top_k)] + [f"top_res_{r + 1}" for r in range(top_k)]
    columns += ["bottom_eig_1", "bottom_res_1", *(["trace", "trace_stderr"] if trace else [])]
    columns += ["adam_sharpness", "adam_sharpness_res", "sgd_threshold", "adam_threshold"]
    return columns


def study_curvature_columns(config, trace: bool | None = None) -> list[str]:
    """curvature.csv's columns for a study: its axes and its deepest program's layers.

    A shallower program's rows leave the deeper layers' columns empty (read back as NaN). The trace
    columns are there when the study estimates the trace (``curvature.trace_probes`` >= 2; runs
    written before this rule have them either way: ``trace=True`` gives that layout).
    """
    from scalelab.schema import grid_axes

    depth = max(len(single.model.hidden) for _, single in config.programs())
    with_trace = config.curvature.trace_probes >= 2 if trace is None else trace
    return curvature_columns(grid_axes(config), depth, config.curvature.top_k, with_trace)


def model_numbers(m: Measurement, num_hidden: int) -> dict[str, float]:
    """One model's measurement (numpy, no model axes) as {column: value}, without identity columns."""
    p, h, b = m.probes, m.curvature.hessian, m.curvature.blocks
    out = {name: float(getattr(p, name)) for name in SCALAR_PROBES}
    for i in range(num_hidden + 1):
        for column, field in LAYER_PROBES:
            out[f"{column}_{i}"] = float(getattr(p, field)[i])
        out[f"layer_{i}_top_eig"] = float(b.top_eigenvalues[i, 0])
        out[f"layer_{i}_trace"] = float(b.trace[i])
    for j in range(num_hidden):
        for name in HIDDEN_PROBES:
            out[f"{name}_{j}"] = float(getattr(p, name)[j])
    for r in range(h.top_eigenvalues.shape[0]):
        out[f"top_eig_{r + 1}"] = float(h.top_eigenvalues[r])
        out[f"top_res_{r + 1}"] = float(h.top_residuals[r])
    out.update(
        bottom_eig_1=float(h.bottom_eigenvalues[0]), bottom_res_1=float(h.bottom_residuals[0]),
        trace=float(h.trace), trace_stderr=float(h.trace_stderr),
        adam_sharpness=float(m.adam_sharpness), adam_sharpness_res=float(m.adam_residual),
    )  # fmt: skip
    return out


def thresholds(optimizer: OptimizerConfig, lr: float) -> dict[str, float]:
    adam = curv.adam_threshold(lr, optimizer.b1) if optimizer.name in ADAM_LIKE else math.nan
    return {"sgd_threshold": curv.sgd_threshold(lr), "adam_threshold": adam}


def skip_reason(diverged: bool, diverge_epoch: int) -> str:
    return f"diverged in epoch {diverge_epoch + 1}" if diverged else ""
