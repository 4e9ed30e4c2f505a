"""Curvature timing: the top Hessian eigenvalue of many models as one vmapped program vs one at a time.

The loss and its Hessian-vector products are the library's (``train.batch_loss`` on the grid's
``/255`` hypers, ``curvature.make_chunked_hvp``, ``flat_matvec``, ``top_eigenpairs``), as
``scalelab.measure`` measures sharpness during a run: raw pixels in, each HVP chunk transformed
``(x - shift) * scale`` inside the loss.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from experiments.bench.settings import BASE_LR, CURVATURE_TOL
from experiments.bench.timing import interleaved_best, say
from scalelab import curvature
from scalelab.config import DataConfig, GridConfig, RunConfig, TrainConfig
from scalelab.measure import measurement_batch
from scalelab.runner import plan_grid
from scalelab.train import Batch, Hypers, batch_loss

CURVATURE_CHUNK = 1024  # examples per HVP chunk: bounded memory, as for full-batch curvature


def hvp_flops_per_sample(widths: Sequence[int]) -> int:
    """Matmul FLOPs of one sample's stand-alone Hessian-vector product (forward-over-reverse) for an
    MLP of these layer widths, as XLA compiles it: the primal forward, the tangent forward and the
    tangent of the backward pass; the primal weight gradients are computed by nobody (their
    output is unused), so each layer's product ``P = a b`` costs ``6P`` (forward, ``x V``,
    ``x^T d(delta)``) and every layer but the first ``10P`` more (``dx W``, the primal and the
    tangent input gradient, ``dx^T delta``). 784-128-10: 622,592 = 6.12 N per example; XLA's cost
    analysis of the compiled HVP (matmuls and elementwise work) agrees within 0.1% (tests/test_bench.py)."""
    products = [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return 6 * sum(products) + 10 * sum(products[1:])


def lanczos_hvp_flops_per_sample(widths: Sequence[int]) -> int:
    """Matmul FLOPs of one sample's Hessian-vector product *inside* a Lanczos loop: the rates' count.

    There the parameters and the data are loop constants, so XLA hoists everything that does not
    depend on the vector (the primal forward pass and the primal backward deltas) out of the loop
    (checked in the compiled HLO); each product then costs only its tangent work. That is ``4P`` for
    the first layer (``x V`` and ``x^T d(delta)``) and ``12P`` for every later one (``dx W + x V``,
    ``d(delta) W^T + delta V^T``, ``dx^T delta + x^T d(delta)``). 784-128-10: 416,768 = 4.10 N per
    example, two-thirds of the stand-alone ``hvp_flops_per_sample``; XLA's cost analysis of the
    product's tangent map agrees within 0.3% (tests/test_bench.py)."""
    products = [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return 4 * products[0] + 12 * sum(products[1:])


def mlp_widths(params) -> tuple[int, ...]:
    """``(inputs, hidden..., classes)`` of a Flax MLP's params (Dense_0 .. Dense_L kernels)."""
    layers = params["params"]
    kernels = [layers[f"Dense_{i}"]["kernel"].shape for i in range(len(layers))]
    return (kernels[0][-2], *(k[-1] for k in kernels))


def top_eigenvalue_fn(model, loss_fn, hypers: Hypers):
    """``top(params, v0, batch, num_steps) -> (eigenvalue, Ritz residual)`` of the mean loss on ``batch``."""

    def loss_on(params, chunk: Batch):
        return batch_loss(model, loss_fn, params, hypers, chunk)[0]

    def top(params, v0, batch: Batch, num_steps: int):
        hvp_fn = curvature.make_chunked_hvp(loss_on, batch, min(CURVATURE_CHUNK, batch.x.shape[0]))
        pairs = curvature.top_eigenpairs(curvature.flat_matvec(hvp_fn, params), v0, num_steps, 1)
        return pairs.values[0], pairs.residuals[0]

    return top


def hvp_products_fn(model, loss_fn, hypers: Hypers):
    """``products(params, v0, batch, count) -> u``: ``count`` normalised HVPs in a loop, the Lanczos
    loop's products without its Krylov basis, to tell the HVP's own cost from the basis's."""

    def loss_on(params, chunk: Batch):
        return batch_loss(model, loss_fn, params, hypers, chunk)[0]

    def products(params, v0, batch: Batch, count: int):
        hvp_fn = curvature.make_chunked_hvp(loss_on, batch, min(CURVATURE_CHUNK, batch.x.shape[0]))
        matvec = curvature.flat_matvec(hvp_fn, params)
        return lax.fori_loop(0, count, lambda _, u: matvec(u) / jnp.linalg.norm(u), v0)

    return products


def curvature_problem(settings: dict, dataset):
    """The default model and ``--curvature-loss`` with the grid's ``/255`` hypers, and the first
    ``--curvature-examples`` training examples, as ``runner.plan_grid`` and ``measure`` prepare them."""
    n = settings["curvature_examples"]
    config = RunConfig(
        data=DataConfig(train_limit=n, test_limit=settings["test_limit"]),
        train=TrainConfig(loss=settings["curvature_loss"], batch_size=min(32, n)),
        grid=GridConfig(inputs=("/255",), seeds=1, lrs=(BASE_LR,)),
    )
    plan = plan_grid(config, dataset)
    hypers = jax.tree.map(lambda a: jnp.asarray(a[0]), plan.hypers)  # the one variant
    return plan.program, hypers, measurement_batch(plan.data.train_x, plan.data.train_y, n)


def curvature_bench(settings: dict, dataset, peak: float) -> dict:
    """Top-1 Hessian eigenvalue at initial params: one vmapped program vs a jitted model at a time."""
    program, hypers, batch = curvature_problem(settings, dataset)
    n = batch.x.shape[0]
    top = top_eigenvalue_fn(program.model, program.loss_fn, hypers)
    counts = settings["curvature_models"]
    params = jax.vmap(lambda s: program.model.init(jax.random.PRNGKey(s), batch.x[:1]))(jnp.arange(max(counts)))
    singles = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(max(counts))]
    v0 = jax.random.normal(jax.random.PRNGKey(0), ravel_pytree(singles[0])[0].shape)
    single = jax.jit(top, static_argnums=3)
    steps, tried = choose_lanczos_steps(single, singles[0], v0, batch, settings["lanczos_steps"])
    results = [time_curvature(top, single, params, singles, v0, batch, steps, c, settings["repeats"]) for c in counts]
    products = hvp_products_fn(program.model, program.loss_fn, hypers)
    flops = lanczos_hvp_flops_per_sample(mlp_widths(singles[0]))
    for r in results:
        r.update(time_products(products, params, singles, v0, batch, steps + 1, r["models"], settings["repeats"]))
        add_rates(r, flops * n * (steps + 1), peak)
    return {
        "what": "top-1 Hessian eigenvalue at initial params (seeds 0..M-1), Lanczos + 1 Ritz residual matvec",
        "examples": n, "loss": settings["curvature_loss"], "inputs": "/255", "hvp_chunk": min(CURVATURE_CHUNK, n),
        "tolerance": CURVATURE_TOL, "steps_tried": tried, "num_steps": steps,
        "lanczos_hvp_flops_per_sample": flops, "hvp_flops_per_sample": hvp_flops_per_sample(mlp_widths(singles[0])),
        "hvps_per_model": steps + 1, "gemm_peak_gflops": peak,
        "model_0_rel_residual": tried[str(steps)],
        "converged_on_model_0": tried[str(steps)] <= CURVATURE_TOL,
        "worst_rel_residual": float(np.max([r["worst_rel_residual"] for r in results])),
        "results": results,
        "run_measurement": run_measurement_bench(settings, dataset) if settings["measurement_models"] else None,
    }  # fmt: skip


def run_measurement_bench(settings: dict, dataset, config: RunConfig | None = None) -> dict:
    """What a run measures (``measure.measure_grid``: probes, the Hessian's and each layer's extreme
    eigenvalues, Adam's sharpness) for ``measurement_models`` models at init, by default of the
    default network and ``CurvatureConfig``: all at once (vmapped) against the run's blocks
    (``measure.measure_block``; one model at a time on this CPU), interleaved, best of ``repeats``."""
    from scalelab import grid as grid_lib
    from scalelab import measure

    count = settings["measurement_models"]
    if config is None:
        config = RunConfig(data=DataConfig(train_limit=settings["curvature_examples"]))
    config = dataclasses.replace(config, grid=GridConfig(inputs=("/255",), seeds=count))
    plan, curv = plan_grid(config, dataset), config.curvature
    init_keys, _ = grid_lib.seed_keys(plan.seeds)
    states = grid_lib.init_grid(plan.program, init_keys, 1, plan.data.train_x.shape[1])
    hypers = jax.tree.map(jnp.asarray, plan.hypers)
    batch = measurement_batch(plan.data.train_x, plan.data.train_y, curv.examples)
    num_params = ravel_pytree(jax.tree.map(lambda a: a[0, 0], states.params))[0].shape[0]
    block = measure.measure_block(curv, num_params, jax.default_backend())
    say(f"curvature: the run's measurement of {count} models, vmapped and in blocks of {block or count}")
    fn = jax.jit(measure.measure_grid, static_argnums=(0, 1, 2), static_argnames="block")
    args = (plan.program, curv, plan.config.optimizer, states, hypers, batch, measure.measurement_key(0))
    outputs: dict = {}
    runs = {name: (lambda name=name, b=b: outputs.__setitem__(name, jax.block_until_ready(fn(*args, block=b))))
            for name, b in (("vmapped", 0), ("blocked", block))}  # fmt: skip
    best = interleaved_best(runs, settings["repeats"])
    tops = [np.asarray(outputs[name].curvature.hessian.top_eigenvalues) for name in runs]
    return {
        "models": count, "examples": curv.examples, "lanczos_steps": curv.lanczos_steps, "models_per_block": block,
        "vmapped_s": best["vmapped"], "blocked_s": best["blocked"],
        "blocked_over_vmapped": best["vmapped"] / best["blocked"],
        "top_eig_max_rel_diff": float(np.max(np.abs(tops[1] - tops[0]) / np.abs(tops[0]))),
    }  # fmt: skip


def time_products(products, params, singles, v0, batch: Batch, num_products: int, count: int, repeats: int) -> dict:
    """The Lanczos loop's ``num_products`` HVPs alone (``hvp_products_fn``) for the first ``count``
    models, vmapped and one model at a time, interleaved, best of ``repeats``: whether the HVP
    itself gains from vmap, apart from the reorthogonalisation against each model's basis."""
    models = jax.tree.map(lambda a: a[:count], params)
    vmapped = jax.jit(jax.vmap(products, in_axes=(0, None, None, None)), static_argnums=3)
    single = jax.jit(products, static_argnums=3)
    runs = {
        "vmapped": lambda: jax.block_until_ready(vmapped(models, v0, batch, num_products)),
        "sequential": lambda: [jax.block_until_ready(single(p, v0, batch, num_products)) for p in singles[:count]],
    }
    best = interleaved_best(runs, repeats)
    return {"products_vmapped_s": best["vmapped"], "products_sequential_s": best["sequential"],
            "products_vmapped_over_sequential": best["sequential"] / best["vmapped"]}  # fmt: skip


def add_rates(row: dict, flops_per_model: float, peak: float) -> None:
    """GFLOP/s of the HVPs (the Lanczos steps and the Ritz residual's, at ``lanczos_hvp_flops_per_sample``),
    vmapped and one at a time, and as fractions of the GEMM peak; reorthogonalisation (8 m^2 n FLOPs,
    <1% here, but memory-bound) is not counted."""
    for side in ("vmapped", "blocked", "sequential", "products_vmapped", "products_sequential"):
        row[f"{side}_gflops"] = row["models"] * flops_per_model / row[f"{side}_s"] / 1e9
        row[f"{side}_frac_of_peak"] = row[f"{side}_gflops"] / peak


def choose_lanczos_steps(single, params, v0, batch: Batch, candidates: Sequence[int]) -> tuple[int, dict]:
    """The smallest candidate whose Ritz residual / |eigenvalue| on ``params`` is within tolerance."""
    tried = {}
    for steps in sorted(candidates):
        value, residual = single(params, v0, batch, steps)
        tried[str(steps)] = float(residual / abs(value))
        say(f"curvature: {steps} Lanczos steps on model 0, relative residual {tried[str(steps)]:.1e}")
        if tried[str(steps)] <= CURVATURE_TOL:
            return steps, tried
    say(f"curvature: no candidate reached {CURVATURE_TOL:g}; using {steps} steps")
    return steps, tried


def in_blocks(top, block: int):
    """``top`` over a leading model axis, ``block`` models vmapped at a time (``lax.map`` over blocks).

    The curvature analogue of the training grid's cache blocks: a vmapped HVP on 2048 examples keeps
    every model's activations, tangents and Lanczos basis live at once (~10 MB per model), which
    at 64 models streams from memory; blocks of 4 stay in cache on the 2-core CPU (measured 1.31x the
    one-at-a-time loop at 64 models against 1.00x for the whole vmap). On a GPU ``block`` is the
    whole grid: it needs the parallelism, not the cache."""

    def run(models, v0, batch: Batch, num_steps: int):
        return lax.map(lambda p: top(p, v0, batch, num_steps), models, batch_size=block)

    return run


def curvature_block(count: int) -> int:
    """Models per block: 4 on a CPU where it divides ``count`` (see ``in_blocks``), else all of them."""
    return 4 if jax.default_backend() == "cpu" and count % 4 == 0 else count


def time_curvature(top, single, params, singles, v0, batch: Batch, steps: int, count: int, repeats: int) -> dict:
    """The first ``count`` models' eigenvalues: one vmapped program, the same in cache blocks
    (``in_blocks``) and ``single`` per model, each warmed up once untimed, timed interleaved, best of
    ``repeats``."""
    say(f"curvature: {count} models, vmapped, in blocks and one at a time")
    models, block = jax.tree.map(lambda a: a[:count], params), curvature_block(count)
    start = time.perf_counter()
    vmapped = jax.jit(jax.vmap(top, in_axes=(0, None, None, None)), static_argnums=3).lower(models, v0, batch, steps)
    vmapped = vmapped.compile()
    compile_s = time.perf_counter() - start
    blocked = jax.jit(in_blocks(top, block), static_argnums=3).lower(models, v0, batch, steps).compile()
    outputs: dict = {}
    runs = {
        "vmapped": lambda: outputs.__setitem__("vmapped", jax.block_until_ready(vmapped(models, v0, batch))),
        "blocked": lambda: outputs.__setitem__("blocked", jax.block_until_ready(blocked(models, v0, batch))),
        "sequential": lambda: outputs.__setitem__(
            "sequential", [jax.block_until_ready(single(p, v0, batch, steps)) for p in singles[:count]]
        ),
    }
    best = interleaved_best(runs, repeats)
    values, residuals = (np.asarray(a) for a in outputs["vmapped"])
    rel = np.concatenate([residuals / np.abs(values), [float(r / abs(v)) for v, r in outputs["sequential"]]])
    return {
        "models": count, "compile_s": compile_s, "vmapped_s": best["vmapped"], "sequential_s": best["sequential"],
        "vmapped_over_sequential": best["sequential"] / best["vmapped"], "models_per_block": block,
        "blocked_s": best["blocked"], "blocked_over_sequential": best["sequential"] / best["blocked"],
        "blocked_max_abs_diff": float(np.max(np.abs(np.asarray(outputs["blocked"][0]) - values))),
        "worst_rel_residual": float(rel.max()), "eigenvalue_range": [float(values.min()), float(values.max())],
    }  # fmt: skip
