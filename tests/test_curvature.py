"""Curvature estimators against the dense Hessian of small MLPs, in float64.

The nets are small on purpose (8 inputs, two hidden layers of 12, 4 classes: n = 316
parameters) so that ``jax.hessian`` + ``numpy.linalg.eigh`` are the independent reference and a
full Lanczos run (``num_steps = n``) recovers the whole spectrum, multiplicities included.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from scalelab import curvature as C
from scalelab.models import MLP

NUM_EXAMPLES, NUM_INPUTS, NUM_CLASSES, HIDDEN = 64, 8, 4, (12, 12)
LAYERS = [("params", "Dense_0"), ("params", "Dense_1"), ("params", "Dense_2")]
JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


@pytest.fixture(scope="module", autouse=True)
def _float64():
    # A context manager, not jax.config.update: x64 stays on for this module only and the other
    # test modules in the same pytest process keep JAX's float32 default.
    with jax.enable_x64(True):
        yield


def _maybe_jit(fn, jit):
    return jax.jit(fn) if jit else fn


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _logit_mse(logits, labels):
    # Quadratic in the logits: its Hessian in the logits is the identity at every point.
    return 0.5 * jnp.mean(jnp.sum((logits - jax.nn.one_hot(labels, NUM_CLASSES)) ** 2, axis=-1))


class Problem(NamedTuple):
    model: Any
    params: Any  # float64 Flax params
    x: np.ndarray  # (N, D)
    y: np.ndarray  # (N,)
    hessian: np.ndarray  # (n, n) dense, from jax.hessian of the raveled loss

    def loss_fn(self, params):
        return _cross_entropy(self.model.apply(params, self.x), self.y)

    @property
    def hvp_fn(self):
        return functools.partial(C.hvp, self.loss_fn)

    @property
    def n(self):
        return self.hessian.shape[0]


def _data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_EXAMPLES, NUM_INPUTS))
    return x, rng.integers(0, NUM_CLASSES, NUM_EXAMPLES).astype(np.int32)


def _init(model, seed, x):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.PRNGKey(seed), x))


@functools.partial(jax.jit, static_argnums=0)
def _dense_hessian(model, params, x, y):
    """The reference: ``jax.hessian`` of the raveled mean cross-entropy, an ``(n, n)`` matrix."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda f: _cross_entropy(model.apply(unravel(f), x), y))(flat)


def _make_problem(seed=0):
    model = MLP(hidden=HIDDEN, num_classes=NUM_CLASSES, activation="tanh")
    x, y = _data()
    params = _init(model, seed, x)
    return Problem(model, params, x, y, np.asarray(_dense_hessian(model, params, x, y)))


@pytest.fixture(scope="module")
def problem():
    return _make_problem()


@pytest.fixture(scope="module")
def spectrum(problem):
    return np.linalg.eigh(problem.hessian)[0]  # ascending


def _v0(n, seed=3):
    return jnp.asarray(np.random.default_rng(seed).normal(size=n))


# --- Hessian-vector products ------------------------------------------------------------------


def test_hvp_equals_dense_hessian_times_v(problem):
    _, unravel = ravel_pytree(problem.params)
    v = _v0(problem.n)
    hv = jax.jit(lambda v: ravel_pytree(problem.hvp_fn(problem.params, unravel(v)))[0])(v)
    np.testing.assert_allclose(hv, problem.hessian @ np.asarray(v), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("chunk_size", [16, 24], ids=lambda c: f"chunk{c}")
def test_chunked_hvp_equals_full_batch_hvp(problem, chunk_size):
    # 16 divides N = 64; 24 leaves a remainder chunk of 16 (chunked_mean's tests cover N < chunk).
    def batch_loss(params, batch):
        return _cross_entropy(problem.model.apply(params, batch["x"]), batch["y"])

    data = {"x": jnp.asarray(problem.x), "y": jnp.asarray(problem.y)}
    hvp_fn = jax.jit(C.make_chunked_hvp(batch_loss, data, chunk_size))
    v = jax.tree.map(lambda a: jnp.ones_like(a) * 0.1, problem.params)
    np.testing.assert_allclose(
        ravel_pytree(hvp_fn(problem.params, v))[0],
        ravel_pytree(jax.jit(problem.hvp_fn)(problem.params, v))[0],
        rtol=1e-11,
        atol=1e-14,
    )


@JIT
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10, 11])
def test_chunked_mean_weights_chunks_by_size(chunk_size, jit):
    data = {"a": np.arange(10.0) ** 2, "b": np.arange(20.0).reshape(10, 2)}
    fn = lambda d: C.chunked_mean(lambda c: (c["a"].mean(), c["b"].mean(0)), d, chunk_size)  # noqa: E731
    mean = _maybe_jit(fn, jit)(data)
    np.testing.assert_allclose(mean[0], data["a"].mean(), rtol=1e-14)
    np.testing.assert_allclose(mean[1], data["b"].mean(0), rtol=1e-14)


# --- Lanczos ----------------------------------------------------------------------------------


SHORT_STEPS = 20  # few steps: the 5 top pairs are not all converged, the residuals are real


def _short_lanczos(loss_fn, params, v0):
    matvec = C.flat_matvec(functools.partial(C.hvp, loss_fn), params)
    run = C.lanczos(matvec, v0, SHORT_STEPS)
    return run, C.ritz_pairs(matvec, run, 5)


@pytest.fixture(scope="module")
def short_lanczos(problem):
    """``(params, v0) -> (LanczosResult, top-5 Eigenpairs)`` after SHORT_STEPS, compiled once."""
    return jax.jit(functools.partial(_short_lanczos, problem.loss_fn))


@pytest.fixture(scope="module")
def top_pairs(problem, short_lanczos):
    return short_lanczos(problem.params, _v0(problem.n))[1]


def test_lanczos_basis_is_orthonormal_and_tridiagonalises_h(problem, short_lanczos):
    run = short_lanczos(problem.params, _v0(problem.n))[0]
    q = np.asarray(run.basis)
    np.testing.assert_allclose(q @ q.T, np.eye(SHORT_STEPS), atol=1e-13)
    np.testing.assert_allclose(q @ problem.hessian @ q.T, C.tridiagonal(run), atol=1e-13)


@pytest.fixture(scope="module")
def full_lanczos(problem):
    # num_steps = n: the Krylov space is exhausted early (the softmax leaves a null space of
    # dimension >= 13), so a full run also exercises the restart after breakdown.
    matvec = C.flat_matvec(problem.hvp_fn, problem.params)

    def run(v0):
        result = C.lanczos(matvec, v0, problem.n)
        return (
            result,
            C.ritz_pairs(matvec, result, 5),
            C.ritz_pairs(matvec, result, 5, largest=False),
        )

    return jax.jit(run)(_v0(problem.n))


@pytest.mark.parametrize("largest", [True, False], ids=["top", "bottom"])
def test_full_lanczos_recovers_extreme_eigenvalues(spectrum, full_lanczos, largest):
    pairs = full_lanczos[1] if largest else full_lanczos[2]
    expected = spectrum[::-1][:5] if largest else spectrum[:5]
    np.testing.assert_allclose(pairs.values, expected, rtol=1e-6)
    np.testing.assert_allclose(pairs.values, expected, atol=1e-12)
    np.testing.assert_array_less(pairs.residuals, 1e-12)


def test_full_lanczos_tridiagonal_has_the_whole_spectrum(spectrum, full_lanczos):
    assert np.count_nonzero(full_lanczos[0].betas == 0) > 0  # it did restart
    np.testing.assert_allclose(np.linalg.eigvalsh(C.tridiagonal(full_lanczos[0])), spectrum, atol=1e-12)


def test_ritz_residuals_equal_dense_residuals(problem, top_pairs):
    pairs = top_pairs
    y, theta = np.asarray(pairs.vectors), np.asarray(pairs.values)
    dense = np.linalg.norm(y @ problem.hessian - theta[:, None] * y, axis=1)
    assert dense.max() > 1e-6  # not converged: the comparison is not between two zeros
    np.testing.assert_allclose(pairs.residuals, dense, rtol=1e-8, atol=1e-14)


def test_ritz_residual_bounds_the_eigenvalue_error(spectrum, top_pairs):
    # Symmetric H: some eigenvalue lies within ||H y - theta y|| of every Ritz value.
    pairs = top_pairs
    distance = np.abs(np.asarray(pairs.values)[:, None] - spectrum[None]).min(axis=1)
    np.testing.assert_array_less(distance, np.asarray(pairs.residuals) * (1 + 1e-9) + 1e-14)


def test_cheap_residual_bound_equals_true_residual_with_full_reorthogonalisation(top_pairs):
    # |beta_m s_mi| = ||H y - theta y|| in exact arithmetic; full reorthogonalisation keeps it so.
    np.testing.assert_allclose(top_pairs.residual_bounds, top_pairs.residuals, rtol=1e-6, atol=1e-12)


@jax.jit
def _diagonal_lanczos(diagonal, v0):
    return C.lanczos(lambda u: diagonal * u, v0, v0.shape[0])


@pytest.mark.parametrize(
    "diagonal",
    [np.full(8, 2.0), np.array([3.0, 3, 3, 1, 1, 0, 0, 0]), np.zeros(8)],
    ids=["identity", "low-rank-multiplicities", "zero"],
)
def test_lanczos_restarts_at_breakdown_without_nans(diagonal):
    # Invariant subspaces after 1-3 steps: without the restart these would divide by beta = 0.
    run = _diagonal_lanczos(jnp.asarray(diagonal), jnp.ones(8))
    assert np.all(np.isfinite(run.basis)) and np.all(np.isfinite(run.alphas))
    np.testing.assert_allclose(run.basis @ run.basis.T, np.eye(8), atol=1e-13)
    np.testing.assert_allclose(np.linalg.eigvalsh(C.tridiagonal(run)), np.sort(diagonal), atol=1e-13)


@JIT
def test_vmapped_lanczos_restarts_exactly_the_models_that_break_down(jit):
    """The restart's batching rule (``_restart_if``) runs only when some model broke down, for all of
    them, and keeps the others' vectors: each model of the batch equals its own unbatched run, one
    that never breaks down (distinct eigenvalues) beside ones that break down at steps 1 to 3."""
    diagonals = jnp.asarray([np.arange(1.0, 9.0), np.full(8, 2.0), [3.0, 3, 3, 1, 1, 0, 0, 0], np.zeros(8)])
    batched = _maybe_jit(jax.vmap(_diagonal_lanczos, in_axes=(0, None)), jit)(diagonals, jnp.ones(8))
    assert np.count_nonzero(batched.betas[0] == 0) == 0 and np.all(np.count_nonzero(batched.betas[1:] == 0, 1) > 0)
    for i, diagonal in enumerate(diagonals):
        single = _diagonal_lanczos(diagonal, jnp.ones(8))
        for got, want in zip(batched, single, strict=True):
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-13)


def _cancelling_vectors():
    """A (4, 50) orthonormal basis and two vectors: one mostly inside its span (the first pass
    cancels, DGKS asks for a second), one mostly outside (one pass is enough)."""
    basis = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (50, 4), jnp.float32))[0].T
    noise = jax.random.normal(jax.random.PRNGKey(1), (2, 50), jnp.float32)
    inside = basis.T @ jnp.array([3.0, -2.0, 1.0, 5.0]) + 1e-4 * noise[0]
    return basis, jnp.stack([inside, noise[1]])


def test_dgks_takes_a_second_pass_only_where_the_first_cancelled():
    basis, (inside, outside) = _cancelling_vectors()
    once = [C._project_out(w, basis) for w in (inside, outside)]
    assert float(jnp.linalg.norm(once[0])) < C.DGKS_ETA * float(jnp.linalg.norm(inside))  # cancelled
    assert float(jnp.linalg.norm(once[1])) > C.DGKS_ETA * float(jnp.linalg.norm(outside))
    got = [C._orthogonalise_dgks(w, basis) for w in (inside, outside)]
    np.testing.assert_array_equal(got[1], once[1])  # no second pass
    np.testing.assert_array_equal(got[0], C._project_out(once[0], basis))  # a second pass
    for w in got:  # both orthogonal to the basis to float32 precision, relative to what is left
        assert float(jnp.max(jnp.abs(basis @ w))) <= 1e-5 * float(jnp.linalg.norm(w))


@JIT
def test_vmapped_dgks_equals_each_vector_alone(jit):
    """The second pass's batching rule runs it for all when some vector needs it and keeps the
    others' one-pass results: each row equals its own unbatched result, with a batched or a shared basis."""
    basis, vectors = _cancelling_vectors()
    alone = [C._orthogonalise_dgks(w, basis) for w in vectors]
    shared = _maybe_jit(jax.vmap(C._orthogonalise_dgks, in_axes=(0, None)), jit)(vectors, basis)
    own = _maybe_jit(jax.vmap(C._orthogonalise_dgks), jit)(vectors, jnp.stack([basis, basis]))
    for batched in (shared, own):
        for i, want in enumerate(alone):
            np.testing.assert_allclose(batched[i], want, rtol=1e-6, atol=1e-7)


def test_lanczos_works_in_float32(problem, spectrum):
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), problem.params)
    x32 = problem.x.astype(np.float32)
    loss32 = lambda p: _cross_entropy(problem.model.apply(p, x32), problem.y)  # noqa: E731
    matvec = C.flat_matvec(functools.partial(C.hvp, loss32), params32)
    pairs = jax.jit(lambda v: C.top_eigenpairs(matvec, v, 60, 3))(_v0(problem.n).astype(jnp.float32))
    assert pairs.values.dtype == jnp.float32
    np.testing.assert_allclose(pairs.values, spectrum[::-1][:3], rtol=1e-4)


# --- power iteration --------------------------------------------------------------------------


def test_power_iteration_finds_top_eigenvalue_of_the_hessian(problem, spectrum):
    # Here the largest-magnitude eigenvalue is the largest (lambda_1 / lambda_2 = 1.10).
    assert spectrum[-1] > abs(spectrum[0])
    matvec = C.flat_matvec(problem.hvp_fn, problem.params)
    result = jax.jit(lambda v: C.power_iteration(matvec, v, 400))(_v0(problem.n))
    np.testing.assert_allclose(result.value, spectrum[-1], rtol=1e-6)
    dense = np.linalg.norm(problem.hessian @ result.vector - result.value * result.vector)
    np.testing.assert_allclose(result.residual, dense, rtol=1e-6, atol=1e-14)


@JIT
def test_power_iteration_picks_largest_magnitude_not_largest_value(jit):
    diagonal = jnp.array([1.0, 2.0, -5.0, 0.5])
    result = _maybe_jit(lambda v: C.power_iteration(lambda u: diagonal * u, v, 100), jit)(jnp.ones(4))
    np.testing.assert_allclose(result.value, -5.0, rtol=1e-12)
    np.testing.assert_allclose(result.residual, 0.0, atol=1e-12)


# --- Hutchinson and SLQ -----------------------------------------------------------------------

NUM_PROBES = 30


@pytest.fixture(scope="module")
def hutchinson(problem):
    matvec = C.flat_matvec(problem.hvp_fn, problem.params)
    return jax.jit(lambda key: C.hutchinson_trace(matvec, key, NUM_PROBES, problem.n))


def test_hutchinson_trace_is_within_three_standard_errors(problem, hutchinson):
    est = hutchinson(jax.random.PRNGKey(4))
    exact = np.trace(problem.hessian)
    assert 0 < est.stderr < 0.2 * abs(exact)
    assert abs(est.estimate - exact) < 3 * est.stderr


def test_hutchinson_stderr_is_sample_std_over_sqrt_probes(problem, hutchinson):
    key = jax.random.PRNGKey(5)
    est = hutchinson(key)
    z = np.asarray(C.rademacher_probes(key, NUM_PROBES, problem.n))
    samples = np.einsum("pi,ij,pj->p", z, problem.hessian, z)
    np.testing.assert_allclose(est.estimate, samples.mean(), rtol=1e-10)
    np.testing.assert_allclose(est.stderr, samples.std(ddof=1) / np.sqrt(NUM_PROBES), rtol=1e-10)


@pytest.fixture(scope="module")
def slq(problem, spectrum):
    matvec = C.flat_matvec(problem.hvp_fn, problem.params)
    sigma = 0.01
    # The grid reaches 10 sigma past the spectrum, so the Gaussian tails outside it are < 1e-20.
    grid = jnp.linspace(spectrum[0] - 10 * sigma, spectrum[-1] + 10 * sigma, 4001)
    fn = jax.jit(lambda k: C.slq_density(matvec, k, problem.n, NUM_PROBES, 40, grid, sigma))
    return fn(jax.random.PRNGKey(6)), grid


def test_slq_density_integrates_to_one(slq):
    result, grid = slq
    # Trapezoid rule with spacing ~sigma/4: quadrature error far below the 1e-6 asserted.
    np.testing.assert_allclose(np.trapezoid(result.density, grid), 1.0, atol=1e-6)


def test_slq_weights_sum_to_one_per_probe(slq):
    np.testing.assert_allclose(slq[0].weights.sum(axis=1), 1.0, rtol=1e-12)


def test_slq_first_moment_is_hutchinson_trace_over_dim(problem, slq, hutchinson):
    result, _ = slq
    moment = np.mean(np.sum(result.weights * result.nodes, axis=1))
    est = hutchinson(jax.random.PRNGKey(6))  # same key: the same probes, up to 1/sqrt(n)
    np.testing.assert_allclose(moment, est.estimate / problem.n, rtol=1e-10)
    assert abs(moment - np.trace(problem.hessian) / problem.n) < 3 * est.stderr / problem.n


# --- per-layer blocks -------------------------------------------------------------------------


def test_layer_paths_lists_flax_dense_layers(problem):
    assert C.layer_paths(problem.params) == LAYERS


def test_layer_paths_keeps_a_single_layer_whole():
    params = {"params": {"Dense_0": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}}}
    assert C.layer_paths(params) == [("params", "Dense_0")]


@pytest.mark.parametrize("path", [*LAYERS, ("params", "Dense_0", "kernel")], ids=str)
def test_block_matvec_equals_dense_diagonal_block(problem, path):
    s = C.block_slice(problem.params, path)
    u = _v0(s.stop - s.start)
    hu = jax.jit(C.block_matvec(problem.hvp_fn, problem.params, path))(u)
    np.testing.assert_allclose(hu, problem.hessian[s, s] @ np.asarray(u), rtol=1e-10, atol=1e-13)


@pytest.fixture(scope="module")
def block_top(problem):
    """``mask -> lambda_max(M H M)``: one compiled Lanczos for every block (the mask is traced).

    60 steps exceed the last layer's 52 parameters, so that block also exercises the restarts,
    which add exact zeros to the spectrum of M H M (its top eigenvalue is positive).
    """
    matvec = C.flat_matvec(problem.hvp_fn, problem.params)
    return jax.jit(lambda mask: C.top_eigenpairs(C.masked_matvec(matvec, mask), mask * _v0(problem.n), 60, 1))


@pytest.mark.parametrize("path", LAYERS, ids=str)
def test_block_top_eigenvalue_equals_eigh_of_dense_block(problem, block_top, path):
    s = C.block_slice(problem.params, path)
    pairs = block_top(C.block_mask(problem.params, path))
    np.testing.assert_allclose(pairs.values[0], np.linalg.eigvalsh(problem.hessian[s, s])[-1], rtol=1e-9)
    np.testing.assert_array_less(pairs.residuals[0], 1e-8)


def test_block_slice_rejects_unknown_path(problem):
    with pytest.raises(KeyError, match="Dense_9"):
        C.block_slice(problem.params, ("params", "Dense_9"))


# --- Adam's preconditioned sharpness ----------------------------------------------------------

B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-2


@pytest.fixture(scope="module")
def adam_run(problem):
    """Params and optax.adam state after 3 real updates, the last update, and H there."""
    opt = optax.adam(LR, b1=B1, b2=B2, eps=EPS)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(problem.loss_fn)(params), state, params)
        return optax.apply_updates(params, updates), state, updates

    params, state = problem.params, opt.init(problem.params)
    for _ in range(3):
        params, state, updates = step(params, state)
    hessian = np.asarray(_dense_hessian(problem.model, params, problem.x, problem.y))
    return params, state, updates, hessian


def _hand_preconditioner(state, include_bias_correction):
    adam = state[0]  # optax.adam = chain(scale_by_adam, scale_by_learning_rate)
    t = int(adam.count)
    nu = np.concatenate([np.ravel(a) for a in jax.tree.leaves(adam.nu)])
    p = np.sqrt(nu / (1 - B2**t)) + EPS
    return p * (1 - B1**t) if include_bias_correction else p


@pytest.fixture(scope="module")
def preconditioned_sharpness(problem, adam_run):
    """``(v0, include_bias_correction) -> Eigenpairs``; the flag is traced: one compile for both."""
    params, state, _, _ = adam_run

    def sharpness(v0, include_bias_correction):
        return C.adam_preconditioned_sharpness(
            problem.hvp_fn,
            params,
            state,
            v0,
            problem.n,
            include_bias_correction=include_bias_correction,
            b1=B1,
            b2=B2,
            eps=EPS,
        )

    return jax.jit(sharpness)


@pytest.mark.parametrize("include_bias_correction", [True, False], ids=["with-1-b1^t", "without"])
def test_preconditioned_sharpness_equals_dense_eigh(
    problem, adam_run, preconditioned_sharpness, include_bias_correction
):
    hessian, p = adam_run[3], _hand_preconditioner(adam_run[1], include_bias_correction)
    dense = np.linalg.eigvalsh(hessian / np.sqrt(p)[:, None] / np.sqrt(p)[None, :])[-1]
    pairs = preconditioned_sharpness(_v0(problem.n), include_bias_correction)
    np.testing.assert_allclose(pairs.values[0], dense, rtol=1e-9)


@pytest.mark.parametrize("include_bias_correction", [True, False], ids=["with-1-b1^t", "without"])
def test_adam_preconditioner_equals_hand_built(adam_run, include_bias_correction):
    state = adam_run[1]
    p = C.adam_preconditioner(
        C.find_adam_state(state),
        include_bias_correction=include_bias_correction,
        b1=B1,
        b2=B2,
        eps=EPS,
    )
    np.testing.assert_allclose(p, _hand_preconditioner(state, include_bias_correction), rtol=1e-13)


def test_bias_corrected_preconditioner_turns_adam_update_into_lr_p_inverse_mu(adam_run):
    # The convention stated in adam_preconditioner: update = -lr * P^{-1} mu, raw EMA mu.
    _, state, updates, _ = adam_run
    p = C.adam_preconditioner(state[0], include_bias_correction=True, b1=B1, b2=B2, eps=EPS)
    mu = ravel_pytree(state[0].mu)[0]
    np.testing.assert_allclose(ravel_pytree(updates)[0], -LR * mu / p, rtol=1e-12)


@pytest.mark.parametrize(
    "optimizer",
    [
        optax.scale_by_adam(),
        optax.adam(1e-3),
        optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
        optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
    ],
    ids=["scale_by_adam", "adam", "chain-adamw", "inject_hyperparams"],
)
def test_find_adam_state_finds_it_inside_optax_states(optimizer):
    state = optimizer.init({"w": jnp.ones(3)})
    assert isinstance(C.find_adam_state(state), optax.ScaleByAdamState)


def test_find_adam_state_rejects_a_state_without_adam():
    with pytest.raises(ValueError, match="ScaleByAdamState"):
        C.find_adam_state(optax.sgd(0.1, momentum=0.9).init({"w": jnp.ones(3)}))


@pytest.mark.parametrize("lr", [1e-3, 0.1, 2.0])
def test_stability_thresholds(lr):
    assert C.sgd_threshold(lr) == pytest.approx(2 / lr, rel=1e-15)
    assert C.adam_threshold(lr) == pytest.approx(38 / lr, rel=1e-12)
    assert C.adam_threshold(lr, b1=0.0) == pytest.approx(2 / lr, rel=1e-15)


# --- one call per measurement, vmapped over models --------------------------------------------


def _summary(loss_fn, params, key):
    hvp_fn = functools.partial(C.hvp, loss_fn)
    return C.curvature_summary(hvp_fn, params, key, top_k=3, num_lanczos_steps=40, num_trace_probes=10)


@pytest.fixture(scope="module")
def summary_fn(problem):
    return jax.jit(functools.partial(_summary, problem.loss_fn))


@pytest.fixture(scope="module")
def three_models(problem):
    params = [_init(problem.model, seed, problem.x) for seed in (10, 11, 12)]
    return params, jax.tree.map(lambda *a: jnp.stack(a), *params)


def test_vmapped_summary_equals_per_model_summaries(problem, three_models, summary_fn):
    params, stacked = three_models
    key = jax.random.PRNGKey(7)
    batched = jax.jit(jax.vmap(functools.partial(_summary, problem.loss_fn), in_axes=(0, None)))(stacked, key)
    for i, p in enumerate(params):
        expected = jax.tree_util.tree_leaves_with_path(summary_fn(p, key))
        for (path, want), got in zip(expected, jax.tree.leaves(batched), strict=True):
            err_msg = jax.tree_util.keystr(path)
            np.testing.assert_allclose(got[i], want, rtol=1e-8, atol=1e-12, err_msg=err_msg)


def test_vmapped_lanczos_with_shared_v0_equals_per_model(problem, three_models, short_lanczos):
    params, stacked = three_models
    v0 = _v0(problem.n)
    batched = jax.jit(jax.vmap(short_lanczos, in_axes=(0, None)))(stacked, v0)[1]
    for i, p in enumerate(params):
        single = short_lanczos(p, v0)[1]
        np.testing.assert_allclose(batched.values[i], single.values, rtol=1e-10)
        np.testing.assert_allclose(batched.residuals[i], single.residuals, rtol=1e-6, atol=1e-12)


def test_summary_matches_dense_hessian(problem, spectrum, summary_fn):
    # 40 Lanczos steps: the top 3 have converged to 1e-6; every Ritz value is within its residual.
    whole, blocks = summary_fn(problem.params, jax.random.PRNGKey(8))
    np.testing.assert_allclose(whole.top_eigenvalues, spectrum[::-1][:3], rtol=1e-6)
    bottom_error = np.abs(np.asarray(whole.bottom_eigenvalues)[:, None] - spectrum[None]).min(axis=1)
    np.testing.assert_array_less(bottom_error, np.asarray(whole.bottom_residuals) * (1 + 1e-9) + 1e-14)
    assert abs(whole.trace - np.trace(problem.hessian)) < 3 * whole.trace_stderr
    for i, path in enumerate(LAYERS):
        s = C.block_slice(problem.params, path)
        block = problem.hessian[s, s]
        np.testing.assert_allclose(blocks.top_eigenvalues[i, 0], np.linalg.eigvalsh(block)[-1], rtol=1e-6)
        assert abs(blocks.trace[i] - np.trace(block)) < 3 * blocks.trace_stderr[i]


# --- input scale: the exact statement ---------------------------------------------------------
#
# ReLU net, all *hidden* biases zero, c > 0, all weights held fixed. ReLU is positively
# homogeneous, so every hidden pre-activation and activation scales by c and no ReLU mask
# changes: z(W; c x) = c (z(W; x) - b_out) + b_out. For the first-layer *kernel* W1:
#   (1) dz/dW1 at c x is c times dz/dW1 at x, and z is piecewise linear in W1 (JAX's relu has
#       zero second derivative everywhere), so H_W1(c x) = c^2 J^T [d^2 loss/dz^2 at z(c x)] J.
#   (2) If the loss is quadratic in the logits (d^2 loss/dz^2 constant; here 0.5 ||z - y||^2),
#       H_W1(c x) = c^2 H_W1(x) exactly for every c > 0: its top eigenvalue scales as c^2.
#   (3) Under softmax cross-entropy d^2 loss/dz^2 = diag(p) - p p^T at p = softmax(z(c x)), which
#       changes with c: NOT c^2 (at c = 255 the softmax saturates and the ratio collapses). Exact
#       instead (b_out = 0, as at init): inputs c x give the same kernel block as inputs x with
#       the logits multiplied by c (an inverse temperature) inside the loss.
#   (4) The whole layer block (kernel and bias) is not c^2 even in case (2): dz/db1 does not
#       scale, so H_(W1,b1)(c x) = D H_(W1,b1)(x) D with D = c on kernel entries, 1 on biases.


@pytest.fixture(scope="module")
def relu_net():
    model = MLP(hidden=HIDDEN, num_classes=NUM_CLASSES, activation="relu")
    x, y = _data(seed=2)
    params = _init(model, 20, x)  # Flax's Dense initialises biases to zero
    assert all(not np.any(layer["bias"]) for layer in params["params"].values())
    return model, params, x, y


KERNEL_0 = ("params", "Dense_0", "kernel")


@pytest.fixture(scope="module")
def kernel_top(relu_net):
    """``(loss, input_scale, logit_scale) -> lambda_max`` of the first-layer kernel block.

    Full Lanczos on the 96-dimensional block; the scales are traced, so each loss compiles once.
    """
    model, params, x, y = relu_net
    s = C.block_slice(params, KERNEL_0)
    v0 = _v0(s.stop - s.start)

    @functools.cache
    def compiled(loss):
        def top(input_scale, logit_scale):
            loss_fn = lambda p: loss(logit_scale * model.apply(p, input_scale * x), y)  # noqa: E731
            matvec = C.block_matvec(functools.partial(C.hvp, loss_fn), params, KERNEL_0)
            return C.top_eigenpairs(matvec, v0, v0.size, 1).values[0]

        return jax.jit(top)

    return lambda loss, input_scale=1.0, logit_scale=1.0: compiled(loss)(input_scale, logit_scale)


@pytest.mark.parametrize("c", [0.1, 10.0, 255.0])
def test_first_layer_kernel_sharpness_scales_as_c_squared_for_logit_mse(kernel_top, c):
    base, scaled = kernel_top(_logit_mse), kernel_top(_logit_mse, input_scale=c)
    np.testing.assert_allclose(scaled / base, c**2, rtol=1e-12)


@pytest.mark.parametrize("c", [0.1, 10.0, 255.0])
def test_scaling_inputs_equals_scaling_logits_for_the_cross_entropy_kernel_block(kernel_top, c):
    scaled_inputs = kernel_top(_cross_entropy, input_scale=c)
    scaled_logits = kernel_top(_cross_entropy, logit_scale=c)
    np.testing.assert_allclose(scaled_inputs, scaled_logits, rtol=1e-9)


def test_cross_entropy_first_layer_sharpness_is_not_c_squared(kernel_top):
    # Raw-pixel scale saturates the softmax: d^2 loss / dz^2 shrinks and the c^2 law fails.
    base, scaled = kernel_top(_cross_entropy), kernel_top(_cross_entropy, input_scale=255.0)
    assert scaled / (255.0**2 * base) < 0.5  # 0.31 for this net


@pytest.mark.parametrize("c", [0.1, 255.0])
def test_whole_first_layer_block_scales_as_d_h_d_for_logit_mse(relu_net, c):
    model, params, x, y = relu_net
    path = ("params", "Dense_0")
    scale = ravel_pytree({"bias": jnp.ones(HIDDEN[0]), "kernel": jnp.full((NUM_INPUTS, HIDDEN[0]), c)})[0]
    u = _v0(scale.size)

    @jax.jit
    def block_hvp(inputs, v):
        loss_fn = lambda p: _logit_mse(model.apply(p, inputs), y)  # noqa: E731
        return C.block_matvec(functools.partial(C.hvp, loss_fn), params, path)(v)

    np.testing.assert_allclose(block_hvp(c * x, u), scale * block_hvp(x, scale * u), rtol=1e-9, atol=1e-12)
