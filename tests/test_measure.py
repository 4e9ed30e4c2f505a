"""Measurements during training: vmapped = per model, exact on a small net, diverged models skipped."""

import csv
import dataclasses
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import scale_grid
from scalelab import grid as grid_lib
from scalelab import measure
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, RunConfig, TrainConfig
from scalelab.optim import OptimizerConfig
from scalelab.results import RunDir
from scalelab.runner import plan_grid, run_grid, segment_bounds
from scalelab.train import batch_loss

SETTINGS = CurvatureConfig(every=5, examples=48, top_k=2, lanczos_steps=10, trace_probes=4, density_probes=1)


def config(**overrides) -> RunConfig:
    base = dict(
        data=DataConfig(name="synthetic"),
        model=ModelConfig(hidden=(8,)),
        train=TrainConfig(epochs=2, batch_size=16, loss="ce"),
        grid=GridConfig(inputs=("/1", "/255"), seeds=2),
        curvature=SETTINGS,
    )
    return RunConfig(**{**base, **overrides})


def grid_state(plan, seeds=(0, 1)):
    init_keys, _ = grid_lib.seed_keys(seeds)
    return grid_lib.init_grid(plan.program, init_keys, plan.num_variants, plan.data.train_x.shape[1])


def test_segments_cover_the_epoch_with_at_most_two_lengths():
    assert segment_bounds(13, 0) == [(0, 13)]
    assert segment_bounds(13, 20) == [(0, 13)]
    assert segment_bounds(13, 5) == [(0, 5), (5, 10), (10, 13)]
    bounds = segment_bounds(1875, 100)
    assert bounds[0][0] == 0 and bounds[-1][1] == 1875
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    assert {b - a for a, b in bounds} == {100, 75}


@pytest.mark.parametrize("block", [0, 1, 3], ids=["vmapped", "one-at-a-time", "blocks-of-3"])
def test_vmapped_measurement_equals_each_model_measured_alone(tiny_dataset, block):
    """All four models at once, one at a time, or in blocks of 3 (a block and a remainder of 1)."""
    plan = plan_grid(config(), tiny_dataset)
    states = grid_state(plan)
    batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, SETTINGS.examples)
    key = measure.measurement_key(0)
    hypers = jax.tree.map(jnp.asarray, plan.hypers)
    grid_m = jax.jit(measure.measure_grid, static_argnums=(0, 1, 2), static_argnames="block")(
        plan.program, SETTINGS, plan.config.optimizer, states, hypers, batch, key, block=block
    )
    measure_one = jax.jit(measure.measure_model, static_argnums=(0, 1, 2))
    for s, v in [(0, 0), (1, 1)]:
        alone = measure_one(
            plan.program, SETTINGS, plan.config.optimizer, jax.tree.map(lambda x, s=s, v=v: x[s, v], states),
            jax.tree.map(lambda x, v=v: x[v], hypers), batch, key,
        )  # fmt: skip
        got = jax.tree.map(lambda x, s=s, v=v: x[s, v], grid_m)
        close = np.testing.assert_allclose
        for a, b in zip(jax.tree.leaves(got.probes), jax.tree.leaves(alone.probes), strict=True):
            close(a, b, rtol=2e-4, atol=1e-5)
        for spectrum, single in zip(got.curvature, alone.curvature, strict=True):
            # Ritz values agree within their error bars (unconverged ones are sensitive to
            # round-off: vmapping reorders float32 sums); the traces to float32 accuracy.
            for values, residuals in (("top_eigenvalues", "top_residuals"), ("bottom_eigenvalues", "bottom_residuals")):
                a, b = getattr(spectrum, values), getattr(single, values)
                bars = getattr(spectrum, residuals) + getattr(single, residuals) + 1e-5
                assert np.all(np.abs(a - b) <= bars), (values, a, b, bars)
            close(spectrum.trace, single.trace, rtol=1e-3)
        close(got.adam_sharpness, alone.adam_sharpness)  # nan at init, for both


def test_at_init_adams_sharpness_is_skipped_by_a_real_branch_and_the_rest_is_unchanged(tiny_dataset):
    """``after_updates=False`` (the measurement at step 0) gives the same numbers, Adam's sharpness NaN
    either way, and lowers to a conditional: one flag for the grid, so vmap keeps the branch."""
    plan = plan_grid(config(), tiny_dataset)
    states, hypers = grid_state(plan), jax.tree.map(jnp.asarray, plan.hypers)
    batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, SETTINGS.examples)
    fn = jax.jit(measure.measure_grid, static_argnums=(0, 1, 2), static_argnames="block")
    args = (plan.program, SETTINGS, plan.config.optimizer, states, hypers, batch, measure.measurement_key(0))
    computed, skipped = fn(*args, after_updates=np.bool_(True)), fn(*args, after_updates=np.bool_(False))
    for a, b in zip(jax.tree.leaves(computed), jax.tree.leaves(skipped), strict=True):
        np.testing.assert_array_equal(a, b)  # NaN == NaN here
    assert np.isnan(np.asarray(skipped.adam_sharpness)).all()

    def top_level_conds(cfg):  # a cond that vmap turned into a select would be gone from the top level
        p = plan_grid(cfg, tiny_dataset)
        jaxpr = jax.make_jaxpr(measure.measure_grid, static_argnums=(0, 1, 2))(
            p.program,
            SETTINGS,
            p.config.optimizer,
            grid_state(p),
            hypers,
            batch,
            measure.measurement_key(0),
            after_updates=np.bool_(False),
        )
        return sum(eqn.primitive.name == "cond" for eqn in jaxpr.jaxpr.eqns)

    assert top_level_conds(config()) == top_level_conds(config(optimizer=OptimizerConfig(name="sgd"))) + 1


def test_density_in_blocks_equals_the_vmapped_density(tiny_dataset):
    plan = plan_grid(config(), tiny_dataset)
    states, hypers = grid_state(plan), jax.tree.map(jnp.asarray, plan.hypers)
    batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, SETTINGS.examples)
    density = jax.jit(measure.density_grid, static_argnums=(0, 1), static_argnames="block")
    args = (plan.program, SETTINGS, states, hypers, batch, measure.measurement_key(0))
    (nodes, weights), (blocked_nodes, blocked_weights) = density(*args), density(*args, block=3)
    assert nodes.shape == (2, 2, SETTINGS.density_probes, SETTINGS.density_steps)
    np.testing.assert_allclose(blocked_weights, weights, atol=1e-5)
    np.testing.assert_allclose(blocked_nodes, nodes, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(nodes))))


def test_a_cpu_measures_as_many_models_at_once_as_keep_their_krylov_bases_in_the_block_budget():
    posts_net = 784 * 128 + 128 + 128 * 10 + 10
    defaults = CurvatureConfig()  # 16 Lanczos steps, 32 density steps: 13 MB of basis a model
    assert measure.measure_block(defaults, posts_net, "cpu") == 1
    assert measure.measure_block(defaults, 1000, "cpu") == measure.CPU_MEASURE_BLOCK_BYTES // (32 * 1000 * 4)
    assert measure.measure_block(defaults, posts_net, "gpu") == measure.measure_block(defaults, 10, "tpu") == 0


def test_measured_top_eigenvalues_match_the_dense_hessian(tiny_dataset):
    """The recorded sharpness is the top eigenvalue of the training loss's Hessian on the examples."""
    plan = plan_grid(config(model=ModelConfig(hidden=(4,))), tiny_dataset)
    settings = CurvatureConfig(examples=48, top_k=2, lanczos_steps=40, trace_probes=0)
    states = grid_state(plan, seeds=(0,))
    batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, settings.examples)
    hypers = jax.tree.map(jnp.asarray, plan.hypers)
    m = jax.jit(measure.measure_grid, static_argnums=(0, 1, 2))(
        plan.program, settings, plan.config.optimizer, states, hypers, batch, measure.measurement_key(0)
    )
    for v in range(plan.num_variants):
        params = jax.tree.map(lambda x, v=v: np.asarray(x[0, v], np.float64), states.params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        h = jax.tree.map(lambda x, v=v: np.asarray(x[v], np.float64), plan.hypers)
        with jax.enable_x64(True):
            f64_batch = batch._replace(
                x=jnp.asarray(batch.x, jnp.float64), weight=jnp.asarray(batch.weight, jnp.float64)
            )
            model, loss_fn = plan.program.model, plan.program.loss_fn

            def loss(w, h=h, b=f64_batch, unravel=unravel, model=model, loss_fn=loss_fn):
                return batch_loss(model, loss_fn, unravel(w), h, b)[0]

            dense = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(jnp.asarray(flat))))
        top = np.asarray(m.curvature.hessian.top_eigenvalues[0, v])
        np.testing.assert_allclose(top, dense[::-1][:2], rtol=2e-3, atol=1e-4 * abs(dense).max())
        assert float(m.curvature.hessian.bottom_eigenvalues[0, v, 0]) == pytest.approx(
            dense[0], abs=float(2e-3 * abs(dense).max())
        )


def test_run_records_init_every_k_steps_and_epoch_ends(tiny_dataset, tmp_path):
    cfg = config()
    run = RunDir.create(tmp_path / "run", cfg)
    study, rows = run_grid(cfg, tiny_dataset, run)
    plan = study.grids[0]
    steps = plan.program.num_steps(200)  # 13 steps of 16
    recorded = run.curvature()
    expected_steps = [0, 5, 10, 13, 18, 23, 26]
    assert sorted({r["step"] for r in recorded}) == expected_steps
    assert len(recorded) == len(expected_steps) * 4
    with open(run.curvature_path) as f:
        header = next(csv.reader(f))
    assert header == measure.curvature_columns(plan.axes, 1, SETTINGS.top_k)
    for r in recorded:
        assert r["epoch"] == pytest.approx(r["step"] / steps)
        assert r["skipped"] == ""
        assert r["sgd_threshold"] == pytest.approx(2 / r["lr"]) and r["adam_threshold"] == pytest.approx(38 / r["lr"])
        assert r["top_eig_1"] >= r["top_eig_2"] and r["trace_stderr"] > 0
        assert math.isnan(r["adam_sharpness"]) == (r["step"] == 0)
    # The final measurement's loss is the loss of the final params on the measurement examples.
    params = run.load_params(2, 3)
    batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, SETTINGS.examples)
    hypers = jax.tree.map(lambda x: x[1], plan.hypers)
    loss = float(batch_loss(plan.program.model, plan.program.loss_fn, params, hypers, batch)[0])
    last = next(r for r in recorded if r["model"] == 3 and r["step"] == 26)
    assert last["loss"] == pytest.approx(loss, rel=1e-5)
    # The density at init: for the first seed of every setting (density_seeds 1), models 0 and 1.
    assert [m["model"] for m in run.spectrum()["models"]] == [0, 1]
    # Measuring between stretches of steps does not change training.
    _, plain = run_grid(config(curvature=CurvatureConfig(enabled=False)), tiny_dataset)
    for a, b in zip(rows, plain, strict=True):
        for key in ("train_loss", "test_loss", "grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


def test_the_density_is_estimated_for_the_first_density_seeds_of_every_setting_in_any_chunking(tiny_dataset, tmp_path):
    settings = CurvatureConfig(examples=32, lanczos_steps=4, density_probes=1, density_steps=6, density_seeds=2)
    spectra = {}
    for name, chunk, seeds in (("all", None, 2), ("one-model-chunks", 1, 1)):
        cfg = config(grid=GridConfig(inputs=("/1", "/255"), seeds=3), train=TrainConfig(epochs=1, batch_size=64),
                     curvature=dataclasses.replace(settings, density_seeds=seeds))  # fmt: skip
        run = RunDir.create(tmp_path / name, cfg)
        run_grid(cfg, tiny_dataset, run, max_models_per_chunk=chunk)
        spectra[name] = {m["model"]: m for m in run.spectrum()["models"]}
    assert sorted(spectra["all"]) == [0, 1, 2, 3]  # seeds 0 and 1 of 3, both inputs
    assert sorted(spectra["one-model-chunks"]) == [0, 1]  # seed 0, each model a chunk of its own
    for model, entry in spectra["one-model-chunks"].items():
        np.testing.assert_allclose(entry["nodes"], spectra["all"][model]["nodes"], rtol=1e-4, atol=1e-6)


def test_a_diverged_model_is_skipped_with_its_reason_and_the_others_are_measured(tiny_dataset, tmp_path):
    cfg = config(
        optimizer=OptimizerConfig(name="sgd"),
        grid=GridConfig(inputs=("/1", "/255"), seeds=1, lrs=(1e-2, 1e30)),
        curvature=CurvatureConfig(examples=32, lanczos_steps=6, density_probes=0),
    )
    run = RunDir.create(tmp_path / "run", cfg)
    plan, _ = run_grid(cfg, tiny_dataset, run)
    recorded = run.curvature()
    wild = [r for r in recorded if r["lr"] == 1e30 and r["step"] > 0]
    assert wild and all(r["skipped"].startswith("diverged in epoch") for r in wild[-2:])
    assert all(math.isnan(r["top_eig_1"]) for r in wild if r["skipped"])
    calm = [r for r in recorded if r["lr"] == 1e-2]
    assert calm and all(r["skipped"] == "" and math.isfinite(r["top_eig_1"]) for r in calm)


def test_cli_curvature_flags(idx_folder, tmp_path, capsys):
    base = ["--data", "idx", "--data-dir", str(idx_folder), "--epochs", "1", "--seeds", "1", "--hidden", "8",
            "--batch-size", "32", "--inputs", "/255", "--no-progress", "--no-report"]  # fmt: skip
    out = tmp_path / "k3"
    assert scale_grid.main([*base, "--top-k", "3", "--lanczos-steps", "6", "--curvature-examples", "32",
                            "--out", str(out)]) == 0  # fmt: skip
    rows = RunDir(out).curvature()
    assert {"top_eig_3", "top_res_3"} <= set(rows[0]) and len(rows) == 2
    assert (out / "params" / "epoch_001.npz").exists()
    assert scale_grid.main([*base, "--no-curvature", "--out", str(tmp_path / "off")]) == 0
    assert not (tmp_path / "off" / "curvature.csv").exists()
    capsys.readouterr()
    assert scale_grid.main([*base, "--top-k", "9", "--lanczos-steps", "4", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "--top-k 9" in err and err.count("\n") == 1


def test_a_run_without_trace_probes_writes_no_trace_columns_and_reads_older_runs_that_have_them(tiny_dataset, tmp_path):
    cfg = config(curvature=CurvatureConfig(examples=32, lanczos_steps=4, trace_probes=0, density_probes=0),
                 train=TrainConfig(epochs=1, batch_size=16, loss="ce"))  # fmt: skip
    run = RunDir.create(tmp_path / "run", cfg)
    run_grid(cfg, tiny_dataset, run)
    with open(run.curvature_path) as f:
        header = next(csv.reader(f))
    assert not [c for c in header if "trace" in c]
    assert header == measure.study_curvature_columns(cfg)
    rows = run.curvature()
    assert all(any(math.isfinite(r[c]) for r in rows) for c in header[len(header) - 4 : -1])  # no all-NaN tail
    # A run written before the rule kept NaN trace columns: it still reads, with them.
    legacy = measure.study_curvature_columns(cfg, trace=True)
    text = run.curvature_path.read_text().splitlines()
    cells = [line.split(",") for line in text[1:]]
    positions = {c: i for i, c in enumerate(header)}
    lines = [",".join(row[positions[c]] if c in positions else "nan" for c in legacy) for row in cells]
    run.curvature_path.write_text("\n".join([",".join(legacy), *lines]) + "\n")
    old = run.curvature()
    assert all(math.isnan(r["trace"]) for r in old) and [r["top_eig_1"] for r in old] == [r["top_eig_1"] for r in rows]
