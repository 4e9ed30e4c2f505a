"""Trace estimators at equal matvec counts, against the exact trace of the bench net's Hessian.

The benched net is the default 784-128-10 MLP at init (seed 0) on the curvature problem
(``--curvature-examples`` examples, ``--curvature-loss``, ``/255`` inside the loss): n = 101,770
parameters, too many for a dense Hessian or for ``n`` HVPs. Its trace is exact all the same: for
one hidden layer ``z = x W1 + b1``, ``o = act(z) W2 + b2`` each example's loss depends on ``W1[a, j]``
only through ``z_j`` (coefficient ``x_a``) and on ``W2[j, c]`` only through ``o_c`` (coefficient
``h_j``), so the Hessian's diagonal is ``x_a^2 d2l/dz_j^2`` and ``h_j^2 d2l/do_c^2``, and

    tr H = mean over examples of (|x|^2 + 1) tr(d2l/dz2) + (|h|^2 + 1) tr(d2l/do2),

with the two small per-example Hessians (128 x 128 and 10 x 10) from ``jax.hessian`` in float64
(``exact_trace``; tested against a dense ``jax.hessian`` of a small net). The estimators run in
float32 on the same matvec ``scalelab.measure`` uses, with ``--trace-keys`` independent keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.bench.curvature import CURVATURE_CHUNK, curvature_problem
from experiments.bench.timing import say
from scalelab import curvature
from scalelab.models import ACTIVATIONS
from scalelab.train import Batch, batch_loss

ESTIMATORS = {"hutchinson": curvature.hutchinson_trace, "hutchpp": curvature.hutchpp_trace, "xtrace": curvature.xtrace}


def exact_trace(model, loss_fn, hypers, params, batch: Batch) -> float:
    """``tr`` of the Hessian of ``batch_loss`` for a one-hidden-layer Flax MLP, in float64 (module doc)."""
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)["params"]
        act = ACTIVATIONS[model.activation]
        xt = (jnp.asarray(batch.x, jnp.float64) - hypers.shift) * hypers.scale

        def per_example(x, y):
            z = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
            h = act(z)

            def loss_of_o(o):
                return loss_fn(o[None], y[None])[0]

            def loss_of_z(z):
                return loss_of_o(act(z) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])

            d2z, d2o = (
                jax.hessian(loss_of_z)(z),
                jax.hessian(loss_of_o)(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]),
            )
            return (x @ x + 1) * jnp.trace(d2z) + (h @ h + 1) * jnp.trace(d2o)

        terms = jax.jit(lambda xs, ys: jax.lax.map(lambda xy: per_example(*xy), (xs, ys), batch_size=64))(xt, batch.y)
        weight = jnp.asarray(batch.weight, jnp.float64)
        return float(jnp.sum(weight * terms) / jnp.sum(weight))


def trace_bench(settings: dict, dataset) -> dict:
    """JSON ``trace_estimators``: every estimator at each matvec count, ``--trace-keys`` keys each."""
    program, hypers, batch = curvature_problem(settings, dataset)
    params = program.model.init(jax.random.PRNGKey(0), batch.x[:1])
    say("trace estimators: exact trace (float64, per-example Hessians of the pre-activations)")
    exact = exact_trace(program.model, program.loss_fn, hypers, params, batch)

    def loss_on(p, chunk):
        return batch_loss(program.model, program.loss_fn, p, hypers, chunk)[0]

    hvp_fn = curvature.make_chunked_hvp(loss_on, batch, min(CURVATURE_CHUNK, batch.x.shape[0]))
    matvec, n = curvature.flat_matvec(hvp_fn, params), ravel_pytree(params)[0].shape[0]
    keys = jax.random.split(jax.random.PRNGKey(1), settings["trace_keys"])
    rows = []
    for m in settings["trace_matvecs"]:
        for name, estimator in ESTIMATORS.items():
            say(f"trace estimators: {name}, {m} matvecs x {len(keys)} keys")
            run = jax.jit(lambda k, e=estimator, m=m: e(matvec, k, m, n, jnp.float32))
            got = [jax.tree.map(float, run(k)) for k in keys]
            rows.append(_row(name, m, exact, got))
    return {
        "what": "trace of the Hessian of the curvature problem's loss at init (seed 0), float32 matvecs",
        "num_params": int(n), "examples": int(batch.x.shape[0]), "exact_trace": exact,
        "exact_method": "float64: per-example Hessians in the hidden pre-activations and logits (traces.py)",
        "keys": len(keys), "results": rows,
    }  # fmt: skip


def _row(name: str, matvecs: int, exact: float, got: list) -> dict:
    """Key 0's estimate, error and error bar, and over all keys the RMS error and the error bars' coverage."""
    errors = np.array([g.estimate - exact for g in got])
    stderrs = np.array([g.stderr for g in got])
    return {
        "name": name, "matvecs": matvecs, "estimate": got[0].estimate,
        "rel_error": abs(errors[0]) / abs(exact), "stderr": got[0].stderr, "rel_stderr": got[0].stderr / abs(exact),
        "rms_rel_error": float(np.sqrt(np.mean(errors**2)) / abs(exact)),
        "rms_rel_stderr": float(np.sqrt(np.mean(stderrs**2)) / abs(exact)),
        "within_2_stderr": float(np.mean(np.abs(errors) <= 2 * stderrs)),
    }  # fmt: skip
