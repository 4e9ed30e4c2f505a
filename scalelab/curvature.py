"""Curvature of a loss at given parameters, from Hessian-vector products alone.

Everything here takes a loss function (or a Hessian-vector product built from one) and
parameters, and returns arrays: no model class, no trainer. Every function is pure, has
fixed-length loops (``lax.fori_loop`` / ``lax.map``) and static output shapes, so a caller can
``jax.jit`` it once and ``jax.vmap`` it over a leading model axis, passing probe keys and start
vectors unbatched (``in_axes=None``) so that all models see the same probes.

Three kinds of callables appear:

* ``loss_fn(params) -> scalar``;
* ``hvp_fn(params, v) -> H v`` on pytrees, e.g. ``functools.partial(hvp, loss_fn)`` or
  ``make_chunked_hvp(batch_loss_fn, data, chunk_size)`` for full-batch curvature on 10k+ examples;
* ``matvec(u) -> H u`` on flat ``(n,)`` vectors, built by ``flat_matvec`` / ``block_matvec``.
  The Krylov methods (Lanczos, power iteration, Hutchinson, SLQ) only see a ``matvec``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

PyTree = Any
Path = tuple[Any, ...]
HvpFn = Callable[[PyTree, PyTree], PyTree]
Matvec = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """``H v`` with ``H = d^2 loss_fn / d params^2``, by forward-over-reverse differentiation.

    ``jvp(grad(f), (w,), (v,))`` costs about two gradients and never forms ``H`` (Pearlmutter
    1994). ``v`` has the structure of ``params``; so does the result.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def chunked_mean(fn: Callable[[PyTree], PyTree], data: PyTree, chunk_size: int) -> PyTree:
    """The example-weighted mean of ``fn`` over chunks of ``data``, one chunk in memory at a time.

    ``data`` is a pytree of arrays sharing a leading example axis of length ``N``; ``fn(chunk)``
    must return the *mean* over the chunk's examples (any pytree). The ``N // chunk_size`` full
    chunks go through ``lax.scan``; a remainder of ``r = N % chunk_size`` examples is one more
    (statically shaped) call. The result is ``(chunk_size * sum(full) + r * fn(rest)) / N``,
    which equals ``fn(data)`` for any ``fn`` that is a mean of per-example terms (up to
    floating-point summation order).
    """
    n = jax.tree.leaves(data)[0].shape[0]
    num_full, rest = divmod(n, chunk_size)
    total = None
    if num_full:
        chunks = jax.tree.map(lambda x: x[: num_full * chunk_size].reshape(num_full, chunk_size, *x.shape[1:]), data)

        def add(acc, chunk):
            return jax.tree.map(jnp.add, acc, fn(chunk)), None

        first = jax.tree.map(lambda x: x[0], chunks)
        rest_chunks = jax.tree.map(lambda x: x[1:], chunks)
        total, _ = lax.scan(add, fn(first), rest_chunks)
        total = jax.tree.map(lambda t: t * chunk_size, total)
    if rest:
        tail = jax.tree.map(lambda t: t * rest, fn(jax.tree.map(lambda x: x[num_full * chunk_size :], data)))
        total = tail if total is None else jax.tree.map(jnp.add, total, tail)
    return jax.tree.map(lambda t: t / n, total)


def make_chunked_hvp(batch_loss_fn: Callable[[PyTree, PyTree], jax.Array], data: PyTree, chunk_size: int) -> HvpFn:
    """``hvp_fn(params, v)`` of the full-batch mean loss over ``data``, accumulated over chunks.

    ``batch_loss_fn(params, batch)`` is the mean loss over ``batch``. Because the HVP is linear
    in the loss, the mean of chunk HVPs is the full-batch HVP; the scan sits *outside* the
    differentiation, so memory is that of one chunk (a scan inside ``loss_fn`` would keep every
    chunk's activations for the backward pass).
    """

    def hvp_fn(params: PyTree, v: PyTree) -> PyTree:
        return chunked_mean(lambda batch: hvp(lambda p: batch_loss_fn(p, batch), params, v), data, chunk_size)

    return hvp_fn


def flat_matvec(hvp_fn: HvpFn, params: PyTree) -> Matvec:
    """``u -> H u`` on flat ``(n,)`` vectors, in ``ravel_pytree(params)`` order."""
    _, unravel = ravel_pytree(params)
    return lambda u: ravel_pytree(hvp_fn(params, unravel(u)))[0]


# ---------------------------------------------------------------------------------------------
# Blocks (per-layer curvature)
# ---------------------------------------------------------------------------------------------


def _entry_name(entry: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return entry


def layer_paths(params: PyTree) -> list[Path]:
    """The paths of the "layers" of a params pytree, in the pytree's own key order.

    Single-key wrappers whose child holds only sub-dicts are skipped, so Flax's
    ``{'params': {'Dense_0': {'kernel', 'bias'}, 'Dense_1': ...}}`` gives
    ``[('params', 'Dense_0'), ('params', 'Dense_1')]``: a layer is all of its leaves.
    """
    prefix: Path = ()
    node = params
    while isinstance(node, Mapping) and len(node) == 1:
        ((name, child),) = node.items()
        if not (isinstance(child, Mapping) and all(isinstance(c, Mapping) for c in child.values())):
            break
        prefix, node = (*prefix, name), child
    if not isinstance(node, Mapping):
        return [prefix]
    return [(*prefix, name) for name in node]


def block_slice(params: PyTree, path: Sequence[Any]) -> slice:
    """The slice of ``ravel_pytree(params)[0]`` holding the leaves under ``path``.

    A subtree's leaves are contiguous in flattening order, so a block is a slice of the flat
    vector and the block Hessian is ``H[s, s]``. Raises ``KeyError`` if no leaf is under ``path``.
    """
    path = tuple(path)
    start = stop = None
    offset = 0
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = int(math.prod(jnp.shape(leaf)))
        if tuple(_entry_name(e) for e in leaf_path[: len(path)]) == path:
            start = offset if start is None else start
            stop = offset + size
        offset += size
    if start is None:
        raise KeyError(f"no parameters under {path}; choose one of {layer_paths(params)}")
    return slice(start, stop)


def block_matvec(hvp_fn: HvpFn, params: PyTree, path: Sequence[Any]) -> Matvec:
    """``u -> H_bb u``: the diagonal block of the Hessian for the leaves under ``path``.

    ``u`` has the block's flat size ``s.stop - s.start`` (``s = block_slice(params, path)``). It is
    embedded with zeros elsewhere and the block of the full product is read back, which is
    exactly ``H[s, s] u`` for any ``hvp_fn`` (chunked or not), at the cost of one full HVP.
    """
    s = block_slice(params, path)
    full = flat_matvec(hvp_fn, params)
    n, _ = _flat_size_and_dtype(params)

    def matvec(u: jax.Array) -> jax.Array:
        return full(jnp.zeros(n, u.dtype).at[s].set(u))[s]

    return matvec


def block_mask(params: PyTree, path: Sequence[Any]) -> jax.Array:
    """``(n,)`` 0/1 indicator of the block under ``path`` in ``ravel_pytree(params)`` order.

    Built from shapes only (a constant under ``jit``/``vmap``, never batched over models).
    """
    n, dtype = _flat_size_and_dtype(params)
    mask = np.zeros(n, dtype)
    mask[block_slice(params, path)] = 1
    return jnp.asarray(mask)


def _flat_size_and_dtype(params: PyTree) -> tuple[int, Any]:
    leaves = jax.tree.leaves(params)
    return sum(int(math.prod(jnp.shape(x))) for x in leaves), jnp.result_type(*leaves)


def masked_matvec(matvec: Matvec, mask: jax.Array) -> Matvec:
    """``u -> M H M u`` with ``M = diag(mask)``: the block ``H_bb`` embedded in full-size vectors.

    Its spectrum is ``H_bb``'s plus ``n - |b|`` zeros. Why full size: every block then has the
    same shapes, so a loop over blocks (``lax.map``) compiles one body however many layers.
    """
    return lambda u: mask * matvec(mask * u)


# ---------------------------------------------------------------------------------------------
# Lanczos and Ritz pairs
# ---------------------------------------------------------------------------------------------


class LanczosResult(NamedTuple):
    """``T = tridiag(betas, alphas, betas) = Q H Q^T`` and ``H Q^T = Q^T T + beta_last q e_m^T``."""

    alphas: jax.Array  # (m,) diagonal of T
    betas: jax.Array  # (m - 1,) off-diagonal of T; 0 where the recursion broke down and restarted
    beta_last: jax.Array  # () norm of the residual after step m (the cheap error bound's factor)
    basis: jax.Array  # (m, n) orthonormal rows q_1 .. q_m


def _normalise(v: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(v)
    return v / jnp.where(norm > 0, norm, 1)


def _orthogonalise(w: jax.Array, basis: jax.Array) -> jax.Array:
    # Classical Gram-Schmidt twice ("twice is enough", Parlett 1980 / Giraud et al. 2005):
    # one pass leaves O(eps * cond) components; the second removes them. Unfilled rows are 0.
    for _ in range(2):
        w = _project_out(w, basis)
    return w


def _project_out(w: jax.Array, basis: jax.Array) -> jax.Array:
    return w - basis.T @ (basis @ w)


# Daniel, Gragg, Kaufman & Stewart (1976): a second Gram-Schmidt pass is needed only when the first
# removed most of ``w`` (cancellation); otherwise one pass is already orthogonal to working precision.
DGKS_ETA = 1 / math.sqrt(2)


def _orthogonalise_dgks(w: jax.Array, basis: jax.Array) -> jax.Array:
    """``w`` orthogonalised against ``basis``'s rows: one classical Gram-Schmidt pass, and a second
    only where the first cancelled (``|w'| < |w| / sqrt(2)``, the DGKS criterion).

    Each pass reads the whole basis twice. On a run's 256 examples the loop's own work (mostly
    these passes) took 8.9 ms per 16 steps beside 13.5 ms of products; one pass where one is
    enough brought it to 7.0 ms."""
    once = _project_out(w, basis)
    return _second_pass_if(jnp.linalg.norm(once) < DGKS_ETA * jnp.linalg.norm(w), once, basis)


def _batched(axis_size: int, values, in_batched) -> tuple:
    """``values`` with a leading model axis each: the unbatched ones broadcast (for a batching rule)."""
    return tuple(x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
                 for x, batched in zip(values, in_batched, strict=True))  # fmt: skip


@jax.custom_batching.custom_vmap
def _second_pass_if(needed: jax.Array, w: jax.Array, basis: jax.Array) -> jax.Array:
    """``_project_out(w, basis)`` if ``needed``, else ``w``; vmapped, a pass for every model when
    *some* model needs one (as ``_restart_if``: a batched ``lax.cond`` would run it always)."""
    return lax.cond(needed, lambda: _project_out(w, basis), lambda: w)


@_second_pass_if.def_vmap
def _second_pass_if_batched(axis_size: int, in_batched: list[bool], needed, w, basis):
    needed, w = _batched(axis_size, (needed, w), in_batched[:2])
    project = jax.vmap(_project_out, in_axes=(0, 0 if in_batched[2] else None))
    again = lax.cond(jnp.any(needed), lambda: project(w, basis), lambda: w)
    return jnp.where(needed[:, None], again, w), True


def _restart_vector(step: jax.Array, n: int, dtype) -> jax.Array:
    # Entries in [-1, 1) from an integer hash of (step, index) ("lowbias32", C. Wellons):
    # deterministic, no PRNG key to thread through, and ~10 ops where threefry costs ~0.4 s of
    # compile time per call site. Any vector outside span(Q) works; a hash is one almost surely.
    i = jnp.arange(n, dtype=jnp.uint32)
    h = i * jnp.uint32(0x9E3779B1) + (step.astype(jnp.uint32) + 1) * jnp.uint32(0x85EBCA77)
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        h = (h ^ (h >> shift)) * jnp.uint32(mult)
    h = h ^ (h >> 16)
    return (h.astype(dtype) / 2.0**31 - 1).astype(dtype)


def _restart(j: jax.Array, basis: jax.Array) -> jax.Array:
    """A unit vector orthogonal to ``basis``'s rows: the Lanczos restart after a breakdown at step ``j``."""
    return _normalise(_orthogonalise(_restart_vector(j, basis.shape[1], basis.dtype), basis))


@jax.custom_batching.custom_vmap
def _restart_if(broke: jax.Array, j: jax.Array, basis: jax.Array) -> jax.Array:
    """``_restart(j, basis)`` if ``broke``, else zeros, computed only when needed.

    Vmapped over models, a ``lax.cond`` on a batched predicate becomes a select that runs both
    branches, and the restart's two passes over ``basis`` doubled the (memory-bound)
    reorthogonalisation of every step. The batching rule restarts only when *some* model broke
    down (rarely: an exact invariant subspace), for all models at once.
    """
    return lax.cond(broke, lambda: _restart(j, basis), lambda: jnp.zeros_like(basis[0]))


@_restart_if.def_vmap
def _restart_if_batched(axis_size: int, in_batched: list[bool], broke, j, basis):
    broke, j, basis = _batched(axis_size, (broke, j, basis), in_batched)
    restarted = lax.cond(jnp.any(broke), lambda: jax.vmap(_restart)(j, basis), lambda: jnp.zeros_like(basis[:, 0]))
    return jnp.where(broke[:, None], restarted, 0), True


def lanczos(matvec: Matvec, v0: jax.Array, num_steps: int) -> LanczosResult:
    """``num_steps`` Lanczos steps with full reorthogonalisation (Lanczos 1950; Golub & Van Loan
    2013, Alg. 10.1.1 with complete reorthogonalisation).

    Every new vector is Gram-Schmidt-orthogonalised against *all* previous ones (a second pass
    where the first cancelled, the DGKS criterion), so no ghost copies of converged eigenvalues
    appear and ``T``'s eigenvalues are Ritz values of ``H`` on ``span(Q)``. Breakdown (``beta <=
    eps * sqrt(n) * ||T||``, an invariant subspace: exact multiplicities, ``H`` a multiple of the
    identity, a low-rank ``H``) does not divide by zero: the recursion restarts from a
    pseudo-random vector (a fixed hash of the step number) orthogonalised against ``Q`` and
    records ``beta = 0``, so ``T`` becomes block diagonal and ``num_steps = n`` recovers the whole
    spectrum with multiplicities.

    Args:
      matvec: ``(n,) -> (n,)``, symmetric.
      v0: ``(n,)`` start vector (need not be normalised); its dtype is the working dtype.
      num_steps: ``m``, static, ``1 <= m <= n``.

    Cost: ``m`` matvecs plus ``O(m^2 n)`` for reorthogonalisation; memory ``m * n``.
    """
    n = v0.shape[0]
    if not 1 <= num_steps <= n:
        raise ValueError(f"num_steps={num_steps} must be between 1 and the dimension {n}")
    dtype = v0.dtype
    tol = jnp.finfo(dtype).eps * math.sqrt(n)
    basis = jnp.zeros((num_steps, n), dtype).at[0].set(_normalise(v0))
    zeros = jnp.zeros(num_steps, dtype)

    def step(j, carry):
        basis, alphas, betas, norm_est = carry
        q = basis[j]
        beta_prev = jnp.where(j > 0, betas[j - 1], 0)
        w = matvec(q) - beta_prev * basis[j - 1]
        alpha = jnp.vdot(q, w)
        w = _orthogonalise_dgks(w - alpha * q, basis)
        beta = jnp.linalg.norm(w)
        norm_est = jnp.maximum(norm_est, jnp.abs(alpha) + beta + beta_prev)
        broke = beta <= tol * norm_est
        q_next = jnp.where(broke, _restart_if(broke, j, basis), w / jnp.where(broke, 1, beta))
        basis = basis.at[j + 1].set(q_next, mode="drop")
        alphas = alphas.at[j].set(alpha)
        betas = betas.at[j].set(jnp.where(broke, 0, beta))
        return basis, alphas, betas, norm_est

    basis, alphas, betas, _ = lax.fori_loop(0, num_steps, step, (basis, zeros, zeros, jnp.zeros((), dtype)))
    return LanczosResult(alphas, betas[:-1], betas[-1], basis)


def tridiagonal(result: LanczosResult) -> jax.Array:
    """The ``(m, m)`` symmetric tridiagonal matrix ``T`` of a Lanczos run."""
    return jnp.diag(result.alphas) + jnp.diag(result.betas, 1) + jnp.diag(result.betas, -1)


class Eigenpairs(NamedTuple):
    """``k`` Ritz pairs ``(theta_i, y_i)``; ``residuals[i]`` is the error bar on ``values[i]``.

    For symmetric ``H`` some eigenvalue lies within ``||H y - theta y||`` of ``theta`` (Bauer-Fike /
    Kahan), and within ``residual^2 / gap`` once the pair is isolated by ``gap``.
    """

    values: jax.Array  # (k,) top: descending; bottom: ascending
    vectors: jax.Array  # (k, n) unit Ritz vectors y_i = Q^T s_i (flat; unravel to get pytrees)
    residuals: jax.Array  # (k,) ||H y_i - theta_i y_i||, from k extra true matvecs
    residual_bounds: jax.Array  # (k,) |beta_last * s_{m,i}|: the free Lanczos estimate of the same


def ritz_pairs(matvec: Matvec, result: LanczosResult, k: int, *, largest: bool = True) -> Eigenpairs:
    """The ``k`` largest (descending) or smallest (ascending) Ritz pairs, with true residuals.

    The residual is computed with ``k`` real matvecs (``lax.map``, one at a time to bound
    memory), because the cheap bound ``|beta_m s_{m,i}|`` assumes exact arithmetic and ignores
    the restart couplings; both are returned.
    """
    m = result.alphas.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k={k} must be between 1 and num_steps={m}")
    return _ritz_pairs(matvec, result, np.arange(m - 1, m - 1 - k, -1) if largest else np.arange(k))


def _ritz_pairs(matvec: Matvec, result: LanczosResult, idx: np.ndarray) -> Eigenpairs:
    theta, s = jnp.linalg.eigh(tridiagonal(result))  # ascending
    values, coeffs = theta[idx], s[:, idx]
    vectors = coeffs.T @ result.basis
    residuals, _ = _row_products(matvec, vectors, values)
    return Eigenpairs(values, vectors, residuals, jnp.abs(result.beta_last * coeffs[-1]))


def _row_products(matvec: Matvec, rows: jax.Array, shifts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(||H x_i - shift_i x_i||, x_i^T H x_i)`` for each row, one matvec at a time (``lax.map``).

    Ritz residuals and Hutchinson samples are both this; one call for both keeps a single traced
    matvec in the compiled program, and only scalars leave the loop (no ``(rows, n)`` products).
    """

    def products(row_shift):
        x, shift = row_shift
        hx = matvec(x)
        return jnp.linalg.norm(hx - shift * x), jnp.vdot(x, hx)

    return lax.map(products, (rows, shifts))


def top_eigenpairs(matvec: Matvec, v0: jax.Array, num_steps: int, k: int) -> Eigenpairs:
    """The ``k`` largest eigenpairs (descending) of a symmetric ``matvec``, by Lanczos."""
    return ritz_pairs(matvec, lanczos(matvec, v0, num_steps), k, largest=True)


def bottom_eigenpairs(matvec: Matvec, v0: jax.Array, num_steps: int, k: int) -> Eigenpairs:
    """The ``k`` smallest eigenpairs (ascending) of a symmetric ``matvec``, by Lanczos."""
    return ritz_pairs(matvec, lanczos(matvec, v0, num_steps), k, largest=False)


class PowerIterationResult(NamedTuple):
    value: jax.Array  # () Rayleigh quotient of the final vector
    vector: jax.Array  # (n,) unit vector
    residual: jax.Array  # () ||H v - value v||


def power_iteration(matvec: Matvec, v0: jax.Array, num_steps: int) -> PowerIterationResult:
    """The eigenvalue of largest *magnitude* by ``num_steps`` power iterations (von Mises 1929).

    Converges like ``|lambda_2 / lambda_1|^num_steps``; Lanczos needs far fewer matvecs for the
    same accuracy, this is the simple cross-check. A zero product leaves the zero vector (no NaN).
    """
    v = lax.fori_loop(0, num_steps, lambda _, v: _normalise(matvec(v)), _normalise(v0))
    hv = matvec(v)
    value = jnp.vdot(v, hv)
    return PowerIterationResult(value, v, jnp.linalg.norm(hv - value * v))


# ---------------------------------------------------------------------------------------------
# Stochastic estimators: Hutchinson trace, SLQ spectral density
# ---------------------------------------------------------------------------------------------


def rademacher_probes(key: jax.Array, num_probes: int, dim: int, dtype=None) -> jax.Array:
    """``(num_probes, dim)`` independent +-1 entries: the probes of Hutchinson and SLQ."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    return jax.random.rademacher(key, (num_probes, dim), dtype)


class TraceEstimate(NamedTuple):
    estimate: jax.Array  # () mean of z^T H z over probes
    stderr: jax.Array  # () sample std (ddof=1) / sqrt(num_probes)


def hutchinson_trace(matvec: Matvec, key: jax.Array, num_probes: int, dim: int, dtype=None) -> TraceEstimate:
    """``tr H`` by Hutchinson's (1989) estimator ``mean_i z_i^T H z_i``, ``z_i`` Rademacher.

    Unbiased; its variance is ``2 (||H||_F^2 - sum_j H_jj^2) / num_probes``, estimated here by the
    sample standard deviation (``ddof=1``, so ``num_probes >= 2``) over ``sqrt(num_probes)``.
    Probes are ``rademacher_probes(key, num_probes, dim, dtype)``, one matvec each (``lax.map``).

    The default trace of a run: its error bar is the sample standard error of independent,
    identically distributed samples, honest for any symmetric ``H``, definite or not. Hutch++ and
    XTrace (below) spend the same matvecs better when a few eigenvalues dominate ``||H||_F``, but
    Hutch++'s guarantee is relative to the nuclear norm (``|tr H|`` only for a PSD ``H``) and
    XTrace's error bar comes from dependent leave-one-out samples: on an indefinite 160-parameter
    MLP Hessian (tests/test_trace_estimators.py) the 2-standard-error bars covered the exact
    trace for 94.5% (Hutchinson), 91.5% (Hutch++) and 87.5% (XTrace) of 200 keys.
    """
    probes = rademacher_probes(key, num_probes, dim, dtype)
    return _trace_estimate(_row_products(matvec, probes, jnp.zeros(num_probes, probes.dtype))[1])


def _trace_estimate(samples: jax.Array) -> TraceEstimate:
    return TraceEstimate(jnp.mean(samples), jnp.std(samples, ddof=1) / math.sqrt(samples.shape[0]))


def _products(matvec: Matvec, rows: jax.Array) -> jax.Array:
    """``(k, n)`` rows ``H x_i``, one matvec at a time (``lax.map``: memory of one HVP)."""
    return lax.map(matvec, rows)


def _orthonormal_rows(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Q, R)`` with ``rows.T = Q.T R``: Q's ``k`` rows an orthonormal basis of the rows' span."""
    q, r = jnp.linalg.qr(rows.T)
    return q.T, r


def hutchpp_trace(matvec: Matvec, key: jax.Array, num_matvecs: int, dim: int, dtype=None) -> TraceEstimate:
    """``tr H`` by Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Alg. 1) with ``num_matvecs`` matvecs.

    ``k = num_matvecs // 3`` Rademacher sketch vectors give ``Q = orth(H S)`` (k matvecs); the
    top of the spectrum is counted exactly as ``tr(Q^T H Q)`` (k matvecs) and the rest by
    Hutchinson on the deflated ``(I - QQ^T) H (I - QQ^T)`` with the remaining ``p >= 2`` probes.
    ``stderr`` is the deflated samples' ``std(ddof=1) / sqrt(p)``: a standard error conditional on
    ``Q`` (the exact part has none). Hutch++'s ``O(1/m)`` error bound is relative to the nuclear
    norm, which is ``|tr H|`` only for positive semi-definite ``H``; for an indefinite Hessian
    (``sum |lambda| >> |sum lambda|``) the deflation still removes the large eigenvalues of either
    sign, but the guarantee says nothing about the relative error of the trace.
    """
    k = num_matvecs // 3
    p = num_matvecs - 2 * k
    if k < 1 or p < 2:
        raise ValueError(f"num_matvecs={num_matvecs} must be at least 4 (a sketch vector, its product and two probes)")
    k_sketch, k_probes = jax.random.split(key)
    q, _ = _orthonormal_rows(_products(matvec, rademacher_probes(k_sketch, k, dim, dtype)))
    exact = jnp.sum(q * _products(matvec, q))
    g = rademacher_probes(k_probes, p, dim, q.dtype)
    g = g - (g @ q.T) @ q
    samples = _row_products(matvec, g, jnp.zeros(p, g.dtype))[1]
    deflated = _trace_estimate(samples)
    return TraceEstimate(exact + deflated.estimate, deflated.stderr)


def xtrace(matvec: Matvec, key: jax.Array, num_matvecs: int, dim: int, dtype=None) -> TraceEstimate:
    """``tr H`` by XTrace (Epperly, Tropp & Webber 2024, SIMAX 45(1), Alg. 2.1), ``num_matvecs`` matvecs.

    ``s = num_matvecs // 2`` Gaussian vectors ``Omega`` give ``Y = H Omega`` and ``Q R = Y``
    (s matvecs), ``Z = H Q`` (s matvecs). For each ``i``, Hutch++ is run with the basis of the
    *other* columns, ``Q_(i)``, and ``omega_i`` as its one probe, which is independent of ``Q_(i)``:
    ``t_i = tr(Q_(i)^T H Q_(i)) + omega_i^T (I - P_i) H (I - P_i) omega_i``, each unbiased. The
    estimate is ``mean(t_i)``, the error bar ``std(t_i) / sqrt(s)`` (the paper's; the ``t_i`` are
    exchangeable, not independent, so it is an estimate of the error, not a sample variance of
    independent draws). Every ``t_i`` is computed in the ``s``-dimensional coordinates of ``Q``
    (``xtrace_samples``): no matvecs beyond the ``2 s``.
    """
    s = num_matvecs // 2
    if s < 2:
        raise ValueError(f"num_matvecs={num_matvecs} must be at least 4 (two leave-one-out samples)")
    dtype = jnp.result_type(float) if dtype is None else dtype
    omega = jax.random.normal(key, (s, dim), dtype)
    y = _products(matvec, omega)
    q, r = _orthonormal_rows(y)
    samples = xtrace_samples(omega, y, q, r, _products(matvec, q))
    return TraceEstimate(jnp.mean(samples), jnp.std(samples, ddof=1) / math.sqrt(s))


def xtrace_samples(omega: jax.Array, y: jax.Array, q: jax.Array, r: jax.Array, z: jax.Array) -> jax.Array:
    """XTrace's ``(s,)`` leave-one-out estimates from ``omega, Y = H omega, Y^T = Q^T R, Z = H Q`` (rows).

    ``Q_(i)`` spans ``Y``'s columns but ``i``: inside ``span(Q)`` it is the complement of the unit
    ``u_i`` orthogonal to every column of ``R`` but the ``i``-th, ``u_i ∝ R^{-T} e_i``. With
    ``C = Q^T H Q``, ``w = Q^T omega_i``, ``c = u^T w`` and the residual ``rho = omega_i - Q^T w``
    (``H rho`` is never formed: ``Q H omega_i = R_i``), the two terms are
    ``tr C - u^T C u`` and ``rho^T H rho + 2 c u^T (R_i - C w) + c^2 u^T C u`` with
    ``rho^T H rho = omega_i^T y_i - 2 w^T R_i + w^T C w``.
    """
    c_mat = q @ z.T
    c_mat = (c_mat + c_mat.T) / 2  # H is symmetric; rounding is not
    u = jax.scipy.linalg.solve_triangular(r, jnp.eye(r.shape[0], dtype=r.dtype), trans="T", lower=False)
    u = u / jnp.linalg.norm(u, axis=0, keepdims=True)  # column i: u_i
    w = q @ omega.T  # column i: Q^T omega_i
    cu, cw = c_mat @ u, c_mat @ w
    ucu = jnp.sum(u * cu, axis=0)
    coef = jnp.sum(u * w, axis=0)
    rho_h_rho = jnp.sum(omega * y, axis=1) - 2 * jnp.sum(w * r, axis=0) + jnp.sum(w * cw, axis=0)
    cross = 2 * coef * jnp.sum(u * (r - cw), axis=0)
    return jnp.trace(c_mat) - ucu + rho_h_rho + cross + coef**2 * ucu


class SpectralDensity(NamedTuple):
    density: jax.Array  # (G,) smoothed eigenvalue density on the grid; integrates to ~1
    nodes: jax.Array  # (num_probes, m) Gauss quadrature nodes (Ritz values) per probe
    weights: jax.Array  # (num_probes, m) squared first components of T's eigenvectors, sum 1


def gaussian_density(grid: jax.Array, nodes: jax.Array, weights: jax.Array, sigma: float) -> jax.Array:
    """``mean_probes sum_i w_i N(t; theta_i, sigma^2)`` on ``grid``, with *normalised* Gaussians.

    Each kernel is ``exp(-(t - theta)^2 / (2 sigma^2)) / (sigma sqrt(2 pi))``, so with weights
    summing to 1 per probe the density integrates to 1 over the real line (on a finite grid, to
    1 minus the Gaussian tails outside it).
    """
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernels = jnp.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    return jnp.mean(jnp.sum(weights[None] * kernels, axis=-1), axis=-1)


def slq_density(
    matvec: Matvec,
    key: jax.Array,
    dim: int,
    num_probes: int,
    num_steps: int,
    grid: jax.Array,
    sigma: float,
    dtype=None,
) -> SpectralDensity:
    """Eigenvalue density of ``H`` by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017;
    Ghorbani, Krishnan & Xiao 2019), smoothed by Gaussians of width ``sigma``.

    For a unit probe ``v``, ``v^T f(H) v = sum_i w_i f(theta_i)`` exactly for polynomials of degree
    ``< 2m``, with ``theta, S = eigh(T)`` of an ``m``-step Lanczos run from ``v`` and
    ``w_i = S[0, i]^2``. Probes are the Rademacher ``rademacher_probes(key, ...)`` scaled by
    ``1/sqrt(dim)``, so ``mean_probes sum_i w_i theta_i`` is Hutchinson's estimate of ``tr H / dim``
    with the same ``key``. ``grid``: ``(G,)``. See ``gaussian_density`` for the normalisation.
    """
    probes = rademacher_probes(key, num_probes, dim, dtype) / math.sqrt(dim)

    def quadrature(v):
        theta, s = jnp.linalg.eigh(tridiagonal(lanczos(matvec, v, num_steps)))
        return theta, s[0] ** 2

    nodes, weights = lax.map(quadrature, probes)
    grid = jnp.asarray(grid, nodes.dtype)
    return SpectralDensity(gaussian_density(grid, nodes, weights, sigma), nodes, weights)


# ---------------------------------------------------------------------------------------------
# Adam's preconditioned sharpness and the stability thresholds
# ---------------------------------------------------------------------------------------------


def find_adam_state(opt_state: PyTree) -> optax.ScaleByAdamState:
    """The first ``optax.ScaleByAdamState`` inside an optax state (bare, chained, injected, ...)."""
    found = _search_adam_state(opt_state)
    if found is None:
        raise ValueError("no optax.ScaleByAdamState in this optimiser state; was it built with adam?")
    return found


def _search_adam_state(node: PyTree) -> optax.ScaleByAdamState | None:
    if isinstance(node, optax.ScaleByAdamState):
        return node
    if isinstance(node, Mapping):
        node = tuple(node.values())
    for child in node if isinstance(node, tuple | list) else ():
        found = _search_adam_state(child)
        if found is not None:
            return found
    return None


def adam_preconditioner(
    adam_state: optax.ScaleByAdamState,
    *,
    include_bias_correction: bool | jax.Array,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> jax.Array:
    """The flat ``(n,)`` diagonal of Adam's preconditioner ``P`` after ``t = state.count`` updates.

    optax's Adam update (Kingma & Ba 2015) is ``-lr * mu_hat / (sqrt(nu_hat + eps_root) + eps)``
    with ``mu_hat = mu / (1 - b1^t)`` and ``nu_hat = nu / (1 - b2^t)``. Two conventions for ``P``:

    * ``include_bias_correction=True``: ``P = (1 - b1^t) (sqrt(nu_hat + eps_root) + eps)``, so the
      update is exactly ``-lr P^{-1} mu`` with the *raw* EMA ``mu``: Adam as EMA-momentum on a
      preconditioned gradient, the form whose threshold is ``adam_threshold`` (Cohen et al. 2022).
    * ``False``: ``P = sqrt(nu_hat + eps_root) + eps``, the update being ``-lr P^{-1} mu_hat``.

    They differ by the scalar ``1 - b1^t`` (0.1 at ``t = 1``, within 1e-4 of 1 after ~90 steps),
    so the preconditioned sharpness differs by ``1 / (1 - b1^t)``. ``b1, b2, eps, eps_root`` must
    be those the optimiser was built with (optax's defaults here). Needs ``t >= 1``.
    """
    t = adam_state.count
    nu = ravel_pytree(adam_state.nu)[0]
    p = jnp.sqrt(nu / (1 - b2**t).astype(nu.dtype) + eps_root) + eps
    # A select, not an ``if``: the flag may be a traced bool (one compiled program for both).
    return p * jnp.where(include_bias_correction, 1 - b1**t, 1).astype(nu.dtype)


def preconditioned_matvec(matvec: Matvec, p: jax.Array) -> Matvec:
    """``u -> P^{-1/2} H P^{-1/2} u`` for diagonal ``P`` (flat ``(n,)``).

    Symmetric, and similar to ``P^{-1} H = P^{-1/2} (P^{-1/2} H P^{-1/2}) P^{1/2}``, so Lanczos
    applies and the eigenvalues are those of ``P^{-1} H``.
    """
    scale = 1 / jnp.sqrt(p)
    return lambda u: scale * matvec(scale * u)


def adam_preconditioned_sharpness(
    hvp_fn: HvpFn,
    params: PyTree,
    opt_state: PyTree,
    v0: jax.Array,
    num_steps: int,
    *,
    include_bias_correction: bool | jax.Array,
    k: int = 1,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> Eigenpairs:
    """Top-``k`` eigenpairs of ``P^{-1/2} H P^{-1/2}``, whose eigenvalues are those of ``P^{-1} H``.

    ``P`` is built by ``adam_preconditioner`` from the ``ScaleByAdamState`` found in ``opt_state``
    (see there for the two conventions). Ritz vectors are in the whitened coordinates
    ``P^{1/2} w``. Compare ``values[0]`` with ``adam_threshold(lr, b1)``.
    """
    p = adam_preconditioner(
        find_adam_state(opt_state),
        include_bias_correction=include_bias_correction,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
    )
    matvec = preconditioned_matvec(flat_matvec(hvp_fn, params), p.astype(v0.dtype))
    return top_eigenpairs(matvec, v0, num_steps, k)


def sgd_threshold(lr: float) -> float:
    """``2 / lr``: gradient descent is unstable along directions with curvature above it.

    On a quadratic, GD multiplies the component along an eigenvalue ``lambda`` by ``1 - lr lambda``;
    full-batch training sits at this edge of stability (Cohen et al. 2021, ICLR).
    """
    return 2.0 / lr


def adam_threshold(lr: float, b1: float = 0.9) -> float:
    """``(2 + 2 b1) / ((1 - b1) lr)`` (``38 / lr`` at ``b1 = 0.9``): Adam's stability threshold.

    The threshold of EMA-style momentum ``m <- b1 m + (1 - b1) g, w <- w - lr P^{-1} m`` on a
    quadratic, at which full-batch Adam's preconditioned sharpness ``lambda_max(P^{-1} H)``
    equilibrates (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"). It
    assumes the ``include_bias_correction=True`` form of ``P``.
    """
    return (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)


# ---------------------------------------------------------------------------------------------
# One call per measurement
# ---------------------------------------------------------------------------------------------


class SpectrumSummary(NamedTuple):
    """Both ends of one symmetric operator's spectrum, with error bars, and its trace."""

    top_eigenvalues: jax.Array  # (k,) descending
    top_residuals: jax.Array  # (k,) ||H y - theta y||
    bottom_eigenvalues: jax.Array  # (k,) ascending
    bottom_residuals: jax.Array  # (k,)
    trace: jax.Array  # () Hutchinson estimate
    trace_stderr: jax.Array  # () its standard error


def spectrum_summary(
    matvec: Matvec, v0: jax.Array, key: jax.Array, *, num_steps: int, k: int, num_probes: int
) -> SpectrumSummary:
    """Top-``k`` and bottom-``k`` Ritz values with true residuals, plus a Hutchinson trace.

    One ``num_steps`` Lanczos run from ``v0`` serves both ends; the ``2k`` residuals and the
    ``num_probes`` probes (``rademacher_probes(key, ...)``) share one ``lax.map`` of matvecs.
    Cost: ``num_steps + 2k + num_probes`` matvecs.
    """
    n = v0.shape[0]
    if not 1 <= k <= num_steps <= n:
        raise ValueError(f"need 1 <= k={k} <= num_steps={num_steps} <= dimension {n}")
    run = lanczos(matvec, v0, num_steps)
    theta, s = jnp.linalg.eigh(tridiagonal(run))  # ascending
    idx = np.r_[np.arange(num_steps - 1, num_steps - 1 - k, -1), np.arange(k)]
    vectors = s[:, idx].T @ run.basis
    probes = rademacher_probes(key, num_probes, n, v0.dtype)
    shifts = jnp.concatenate([theta[idx], jnp.zeros(num_probes, v0.dtype)])
    residuals, forms = _row_products(matvec, jnp.concatenate([vectors, probes]), shifts)
    trace = _trace_estimate(forms[2 * k :])
    return SpectrumSummary(
        theta[idx[:k]], residuals[:k], theta[idx[k:]], residuals[k : 2 * k], trace.estimate, trace.stderr
    )


class CurvatureSummary(NamedTuple):
    """Fixed-shape curvature numbers of one model; vmapping adds a leading model axis."""

    hessian: SpectrumSummary  # of the whole Hessian: fields (k,) or ()
    blocks: SpectrumSummary  # of each diagonal block H_bb, in block order: fields (L, k) or (L,)


def curvature_summary(
    hvp_fn: HvpFn,
    params: PyTree,
    key: jax.Array,
    *,
    top_k: int = 5,
    num_lanczos_steps: int = 30,
    num_trace_probes: int = 10,
    block_paths: Sequence[Path] | None = None,
) -> CurvatureSummary:
    """``spectrum_summary`` of the Hessian and of each diagonal block (default: each layer).

    ``hvp_fn(params, v)``: e.g. ``functools.partial(hvp, loss_fn)`` or ``make_chunked_hvp(...)``.
    The whole Hessian and every block are the same computation on a masked operator ``M H M``
    (``masked_matvec``; ``M = I`` for the whole), run by one ``lax.map``, so the compiled program
    holds one Lanczos loop and one matvec loop however many layers there are. ``M H M`` has the
    spectrum of ``H_bb`` plus zeros; the zeros only show if a block's Krylov space is exhausted
    (more steps than it has dimensions), where its top Ritz value tends to
    ``max(lambda_max(H_bb), 0)`` and its bottom one to ``min(lambda_min(H_bb), 0)``. All start
    vectors and probes come from ``key``: vmapping over models with ``key`` unbatched gives every
    model the same ones. Cost: ``(1 + L) (num_lanczos_steps + 2 top_k + num_trace_probes)`` HVPs.
    """
    block_paths = layer_paths(params) if block_paths is None else block_paths
    n, dtype = _flat_size_and_dtype(params)
    matvec = flat_matvec(hvp_fn, params)
    masks = jnp.stack([jnp.ones(n, dtype)] + [block_mask(params, path) for path in block_paths])
    k_v0, k_probes = jax.random.split(key)
    v0 = jax.random.normal(k_v0, (n,), dtype)

    def one(mask_key):
        mask, probe_key = mask_key
        # A masked start stays in the block: M H M maps the block's subspace into itself.
        return spectrum_summary(
            masked_matvec(matvec, mask), mask * v0, probe_key,
            num_steps=num_lanczos_steps, k=top_k, num_probes=num_trace_probes,
        )  # fmt: skip

    every = lax.map(one, (masks, jax.random.split(k_probes, len(masks))))
    return CurvatureSummary(jax.tree.map(lambda a: a[0], every), jax.tree.map(lambda a: a[1:], every))
