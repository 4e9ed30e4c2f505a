"""The anchors raced: PyHessian's top eigenvalue and trace against scalelab's, same net, data and params.

PyHessian (Yao et al. 2020; 0.1 from the package index, on torch's CPU build) and scalelab get the
same 784-128-10 ReLU MLP at the same initial parameters (scalelab's Glorot-uniform init, seeds
0..63), the same first ``--curvature-examples`` training examples at ``/255`` and the same exact
cross-entropy (``torch.nn.CrossEntropyLoss`` = scalelab's ``ce``). Both accuracies are measured
against float64 references on the models PyHessian runs:

* the top eigenvalue: float64 Lanczos with ``REFERENCE_STEPS`` fully reorthogonalised steps;
* the trace: exact. For a ReLU network the second derivative of the activation is 0 almost
  everywhere, so the Hessian's diagonal blocks are the Gauss-Newton matrix's and
  ``tr H = tr G = mean_i [sum_k p_ik |d z_ik|^2 - |sum_k p_ik d z_ik|^2]`` (``d z_ik``: the gradient
  of logit k of example i in the parameters, ``p``: the softmax). For one hidden layer the Gram
  matrix of those gradients has a closed form (``exact_relu_trace``; tested against a dense
  float64 Hessian).

scalelab runs all ``anchor_models`` models in one compiled program (64 by default): the top
eigenvalue in the blocks a run measures in (``measure.measure_block``: one model at a time on a
CPU, all vmapped on a GPU), the trace vmapped;
PyHessian, which has no batch of models, runs each of the first ``pyhessian_models`` (8) one after
another with its defaults (power iteration to ``tol`` 1e-3, Hutchinson to ``tol`` 1e-3, at most 100
products). Figures are seconds per model. scalelab's Lanczos steps and Hutchinson probes are swept
(``LANCZOS_STEPS``, ``TRACE_PROBES``) and each race is reported at the fewest that match PyHessian's
errors, the top eigenvalue also at a run's default 16 steps.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from experiments.bench.curvature import curvature_problem, top_eigenvalue_fn
from experiments.bench.timing import say
from scalelab import curvature, measure
from scalelab.config import CurvatureConfig
from scalelab.losses import get_loss
from scalelab.train import Batch, batch_loss

LANCZOS_STEPS = (4, 5, 6, 7, 8, 12, 16)  # scalelab's accuracy/speed trade-off; 16 is a run's default
REFERENCE_STEPS = 128
TRACE_PROBES = (8, 16, 24, 32)  # Hutchinson's probes, matched to PyHessian's error as the Lanczos steps are
NOT_INSTALLED = {"available": False, "why": "torch and PyHessian are not installed: make bench-anchors installs them"}
NOT_REQUESTED = {"available": False, "why": "not requested (--pyhessian; make bench-anchors)"}


def pyhessian_bench(settings: dict, dataset) -> dict:
    """``anchors.pyhessian``: both tools' seconds per model and relative errors, and their ratio."""
    try:
        import pyhessian  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return dict(NOT_INSTALLED)
    program, hypers, batch = curvature_problem({**settings, "curvature_loss": "ce"}, dataset)
    models, theirs_count = settings["anchor_models"], settings["pyhessian_models"]
    params = jax.vmap(lambda k: program.model.init(k, jnp.zeros((1, batch.x.shape[1]))))(
        jax.vmap(jax.random.PRNGKey)(jnp.arange(models))
    )
    say(f"anchors: float64 references for {theirs_count} models")
    references = [_reference(program, hypers, batch, _model(params, m)) for m in range(theirs_count)]
    say(f"anchors: scalelab, {models} models as a run measures them; PyHessian, {theirs_count} one at a time")
    ours = _scalelab(program, hypers, batch, params, references, models)
    _pyhessian(program, hypers, batch, _model(params, 0))  # untimed: torch's first call sets itself up
    theirs = [_pyhessian(program, hypers, batch, _model(params, m)) for m in range(theirs_count)]
    return {**_summary(ours, theirs, references), "models": models}


def _model(params, m: int):
    return jax.tree.map(lambda a: a[m], params)


def _reference(program, hypers, batch: Batch, params) -> dict:
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        h64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), hypers)
        top = top_eigenvalue_fn(program.model, get_loss("ce"), h64)
        n = ravel_pytree(p64)[0].size
        v0 = jax.random.normal(jax.random.PRNGKey(7), (n,), jnp.float64)
        value, _ = jax.jit(top, static_argnums=3)(p64, v0, batch, REFERENCE_STEPS)
        x = (jnp.asarray(batch.x, jnp.float64) - h64.shift) * h64.scale
        trace = exact_relu_trace(p64, x)
    return {"top": float(value), "trace": float(trace)}


def exact_relu_trace(params, x: jax.Array) -> jax.Array:
    """``tr`` of the mean cross-entropy's Hessian of a one-hidden-layer ReLU MLP on ``x`` (transformed).

    With ``a = x W1 + b1``, ``h = relu(a)``, ``m = [a > 0]`` and ``z = h W2 + b2``, the logit gradients'
    Gram matrix is ``G_kl = delta_kl (|h|^2 + 1) + (|x|^2 + 1) sum_j W2_jk W2_jl m_j``; the Hessian's
    trace is the Gauss-Newton matrix's, ``mean_i sum_k p_k G_kk - p^T G p`` (the cross-entropy's
    Hessian in the logits, ``diag(p) - p p^T``, does not depend on the label).
    """
    layers = params["params"]
    w1, b1, w2, b2 = (layers[f"Dense_{i}"][k] for i in (0, 1) for k in ("kernel", "bias"))
    a = x @ w1 + b1
    h, m = jax.nn.relu(a), (a > 0).astype(x.dtype)
    p = jax.nn.softmax(h @ w2 + b2)
    # per example: G = (|h|^2 + 1) I + (|x|^2 + 1) W2^T diag(m) W2
    hidden = jnp.einsum("jk,ij,jl->ikl", w2, m, w2) * (jnp.sum(x**2, -1) + 1)[:, None, None]
    gram = hidden + (jnp.sum(h**2, -1) + 1)[:, None, None] * jnp.eye(p.shape[-1], dtype=x.dtype)
    diagonal = jnp.einsum("ik,ikk->i", p, gram)
    return jnp.mean(diagonal - jnp.einsum("ik,ikl,il->i", p, gram, p))


def _scalelab(program, hypers, batch: Batch, params, references, models: int) -> dict:
    top = top_eigenvalue_fn(program.model, get_loss("ce"), hypers)
    n = ravel_pytree(_model(params, 0))[0].size
    v0 = jax.random.normal(jax.random.PRNGKey(7), (models, n), jnp.float32)
    out = {}
    for steps in LANCZOS_STEPS:
        fn = jax.jit(lambda p, v, s=steps: _as_a_run(lambda a: top(a[0], a[1], batch, s)[0], (p, v), n, s))
        values, seconds = _timed(fn, params, v0)
        out[f"top_{steps}"] = {"s_per_model": seconds / models, "errors": _errors(values, references, "top")}
    # Hutchinson keeps no Krylov basis, so blocks gain it nothing: vmapped (measured 1.6x PyHessian's
    # speed per model, against 1.1x one model at a time).
    for probes in TRACE_PROBES:
        trace = jax.jit(jax.vmap(lambda p, k=probes: _hutchinson(program, hypers, batch, p, k)))
        estimates, seconds = _timed(trace, params)
        out[f"trace_{probes}"] = {"s_per_model": seconds / models, "errors": _errors(estimates, references, "trace")}
    return out


def _as_a_run(fn, models, num_params: int, lanczos_steps: int):
    """``fn`` over the leading model axis of ``models`` in the blocks (``lax.map``) that a run with
    ``--lanczos-steps`` measures in, its other curvature settings the defaults."""
    settings = CurvatureConfig(lanczos_steps=lanczos_steps)
    block = measure.measure_block(settings, num_params, jax.default_backend())
    return lax.map(fn, models, batch_size=block or jax.tree.leaves(models)[0].shape[0])


def _hutchinson(program, hypers, batch: Batch, params, probes: int) -> jax.Array:
    def loss_on(p, chunk):
        return batch_loss(program.model, get_loss("ce"), p, hypers, chunk)[0]

    hvp_fn = curvature.make_chunked_hvp(loss_on, batch, min(1024, batch.x.shape[0]))
    n = ravel_pytree(params)[0].size
    matvec = curvature.flat_matvec(hvp_fn, params)
    return curvature.hutchinson_trace(matvec, jax.random.PRNGKey(3), probes, n).estimate


def _timed(fn, *args) -> tuple[np.ndarray, float]:
    """``fn(*args)`` as numpy and the better of two timed calls (after a compiling one)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        values = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return np.asarray(values), best


def _errors(values: np.ndarray, references: list[dict], key: str) -> list[float]:
    return [abs(float(values[m]) - r[key]) / abs(r[key]) for m, r in enumerate(references)]


def _pyhessian(program, hypers, batch: Batch, params) -> dict:
    """PyHessian on one model: its top eigenvalue and trace with its defaults, timed."""
    import importlib

    from pyhessian import hessian

    module = importlib.import_module("pyhessian.hessian")  # the module: the package's name is the class
    products = 0
    plain_product = module.hessian_vector_product

    def counted(*args):  # PyHessian does not say how many products it took
        nonlocal products
        products += 1
        return plain_product(*args)

    module.hessian_vector_product = counted
    try:
        return _timed_pyhessian(hessian, params, hypers, batch, lambda: products)
    finally:
        module.hessian_vector_product = plain_product


def _timed_pyhessian(hessian, params, hypers, batch: Batch, products) -> dict:
    """PyHessian's top eigenvalue and trace on one model; ``products()``: its HVPs so far."""
    import torch

    torch.manual_seed(0)
    net = _torch_mlp(params)
    x = torch.from_numpy(np.array((batch.x - hypers.shift) * hypers.scale, np.float32))
    y = torch.from_numpy(np.array(batch.y, np.int64))
    start = time.perf_counter()
    h = hessian(net, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    eigenvalues, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
    top_s, top_products = time.perf_counter() - start, products()
    start = time.perf_counter()
    samples = h.trace(maxIter=100, tol=1e-3)
    trace_s = time.perf_counter() - start
    return {"top": eigenvalues[0], "top_s": top_s, "top_products": top_products, "trace": float(np.mean(samples)),
            "trace_s": trace_s, "trace_products": len(samples)}  # fmt: skip


def _torch_mlp(params):
    import torch

    layers = params["params"]
    first, second = (
        torch.nn.Linear(*layers["Dense_0"]["kernel"].shape),
        torch.nn.Linear(*layers["Dense_1"]["kernel"].shape),
    )
    with torch.no_grad():
        for linear, name in ((first, "Dense_0"), (second, "Dense_1")):
            linear.weight.copy_(torch.from_numpy(np.asarray(layers[name]["kernel"]).T.copy()))
            linear.bias.copy_(torch.from_numpy(np.array(layers[name]["bias"])))
    return torch.nn.Sequential(first, torch.nn.ReLU(), second)


def _summary(ours: dict, theirs: list[dict], references: list[dict]) -> dict:
    """Per-model medians, the Lanczos steps and Hutchinson probes that match PyHessian's errors,
    and the speedups.

    "Matching" compares like with like on the same models: the fewest steps (probes) whose median
    *and* worst relative error are both at most PyHessian's median and worst."""
    return {
        "available": True, "pyhessian_models": len(theirs),
        **_row(ours, theirs, references, "top", _matching(ours, theirs, references, "top", LANCZOS_STEPS)),
        "at_default_accuracy": _row(ours, theirs, references, "top", LANCZOS_STEPS[-1]),
        "lanczos_sweep": {str(s): ours[f"top_{s}"] for s in LANCZOS_STEPS},
        "pyhessian_per_model": [{"rel_error": _rel(t["top"], r["top"]), "s": t["top_s"], "products": t["top_products"]}
                                for t, r in zip(theirs, references, strict=True)],
        "trace": _row(ours, theirs, references, "trace", _matching(ours, theirs, references, "trace", TRACE_PROBES)),
        "trace_sweep": {str(k): ours[f"trace_{k}"] for k in TRACE_PROBES},
        "references": references,
    }  # fmt: skip


def _rel(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


def _matching(ours: dict, theirs: list[dict], references: list[dict], key: str, sizes) -> int:
    """The fewest of ``sizes`` (Lanczos steps or probes) at PyHessian's median and worst error, else the largest."""
    errors = [_rel(t[key], r[key]) for t, r in zip(theirs, references, strict=True)]

    def matches(size: int) -> bool:
        mine = ours[f"{key}_{size}"]["errors"]
        return statistics.median(mine) <= statistics.median(errors) and max(mine) <= max(errors)

    return next((s for s in sizes if matches(s)), sizes[-1])


def _row(ours: dict, theirs: list[dict], references: list[dict], key: str, size: int) -> dict:
    """Both tools' seconds per model, products and errors for ``key`` ("top" or "trace") at ``size``."""
    errors = [_rel(t[key], r[key]) for t, r in zip(theirs, references, strict=True)]
    mine, pyh_s = ours[f"{key}_{size}"], statistics.median(t[f"{key}_s"] for t in theirs)
    size_name, products = ("lanczos_steps", size + 1) if key == "top" else ("scalelab_probes", size)
    return {
        size_name: size, "scalelab_s": mine["s_per_model"], "pyhessian_s": pyh_s,
        "speedup": pyh_s / mine["s_per_model"],
        "scalelab_rel_error": statistics.median(mine["errors"]), "pyhessian_rel_error": statistics.median(errors),
        "scalelab_max_rel_error": max(mine["errors"]), "pyhessian_max_rel_error": max(errors),
        "scalelab_products": products, "pyhessian_products": statistics.median(t[f"{key}_products"] for t in theirs),
    }  # fmt: skip
