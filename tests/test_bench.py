"""The benchmark program: its JSON's structure and sanity, and its usage errors. Never its speed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from experiments import bench

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs Fashion-MNIST (Debian package dataset-fashion-mnist)")
def test_quick_bench_on_two_host_devices_writes_sane_figures(tmp_path):
    """In its own process, on 2 CPU devices: the 8-model grid is spread over both, 1 model is not."""
    out = tmp_path / "b.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench", "--quick", "--host-devices", "2", "--compare-one-device",
         "--no-startup", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())

    assert report["environment"]["platform"] == "cpu" and report["environment"]["device_count"] == 2
    peak, gemm = report["gemm_peak_gflops"], report["gemm"]
    assert gemm["one_device_gflops"] > 0 and gemm["all_devices_gflops"] > 0
    assert peak == max(gemm["one_device_gflops"], gemm["all_devices_gflops"])
    train = report["training"]
    assert train["num_params"] == 784 * 128 + 128 + 128 * 10 + 10
    # forward + weight gradients of both layers, input gradient of the second only
    assert train["matmul_flops_per_sample"] == 2 * 2 * (784 * 128 + 128 * 10) + 2 * 128 * 10
    assert train["six_n_over_matmul_flops"] == pytest.approx(6 * train["num_params"] / train["matmul_flops_per_sample"])
    assert {(r["models"], r["batch_size"]) for r in train["results"]} == {(1, 32), (8, 32)}
    ceiling = train["step_ceiling"]["32"]
    assert ceiling["gflops"] > 0 and ceiling["frac_of_peak"] == pytest.approx(ceiling["gflops"] / peak)
    assert ceiling["models"] == train["results"][-1]["vmapped"]["models_per_block"]
    assert ceiling["devices"] == train["results"][-1]["vmapped"]["devices"]
    assert [r["vmapped"]["devices"] for r in train["results"]] == [1, 2]  # 2+ models per CPU device
    alone, spread = train["results"]
    assert "one_device" not in alone  # nothing to compare: it already runs on one device
    assert spread["devices_over_one_device"] == pytest.approx(
        spread["one_device"]["epoch_s"] / spread["vmapped"]["epoch_s"]
    )
    assert spread["one_device"]["samples_per_s"] > 0 and "on one device" in done.stdout
    for row in train["results"]:
        assert 1 <= row["vmapped"]["models_per_block"] <= row["models"]
        assert row["vmapped"]["frac_of_step_ceiling"] == pytest.approx(row["vmapped"]["gflops"] / ceiling["gflops"])
        assert row["seeds"] * len(row["lrs"]) == row["models"] and row["finite"]
        for side in ("vmapped", "sequential"):
            figures = row[side]
            assert figures["samples_per_s"] > 0 and figures["epoch_s"] > 0
            assert 0 < figures["frac_of_peak"] < 1.5
            assert figures["gflops"] == pytest.approx(figures["frac_of_peak"] * peak, rel=1e-9)
        assert row["vmapped_over_sequential"] > 0 and row["sequential"]["sequential_method"]
    axes = report["numeric_axes"]  # on by default: every numeric axis against lr alone, same M
    assert axes["models"] == 16 and axes["finite"] and axes["throughput_ratio"] > 0
    assert axes["every_axis"]["variants"] == "2 inputs x 2 lrs x 2 init_scales x 2 epsilons"
    assert report["headline"]["numeric_axes_throughput_ratio"] == axes["throughput_ratio"]
    assert report["cost_curve"] is None and report["anchors"]["pyhessian"]["available"] is False
    assert "numeric axes (16 models" in done.stdout and "PyHessian anchor: not requested" in done.stdout
    assert report["keras"]["samples_per_s"] is None

    curv = report["curvature"]
    assert [r["models"] for r in curv["results"]] == [1, 4]
    assert curv["converged_on_model_0"] and curv["model_0_rel_residual"] <= 1e-3
    assert curv["worst_rel_residual"] <= 1e-3  # the other seeds converge as fast at initialisation
    assert all(r["vmapped_over_sequential"] > 0 and r["eigenvalue_range"][0] > 0 for r in curv["results"])
    flops = 2 * 512 * (curv["num_steps"] + 1) * curv["lanczos_hvp_flops_per_sample"]  # 2 models, 512 examples
    row = curv["results"][0]
    assert row["vmapped_gflops"] == pytest.approx(row["models"] * flops / 2 / row["vmapped_s"] / 1e9)
    assert row["sequential_frac_of_peak"] == pytest.approx(row["sequential_gflops"] / peak)
    assert [r["models_per_block"] for r in curv["results"]] == [1, 4]  # cache blocks of 4 on a CPU
    for r in curv["results"]:  # the Lanczos loop's HVPs alone, timed beside it
        assert r["products_vmapped_over_sequential"] > 0 and r["products_sequential_frac_of_peak"] > 0
    for r in curv["results"]:  # the same eigenvalues, in blocks or all at once
        assert r["blocked_over_sequential"] > 0 and r["blocked_max_abs_diff"] <= 1e-4 * r["eigenvalue_range"][1]
    traces = report["trace_estimators"]
    assert traces["num_params"] == train["num_params"] and traces["exact_trace"] > 0
    assert [(r["name"], r["matvecs"]) for r in traces["results"]] == [
        (n, 12) for n in ("hutchinson", "hutchpp", "xtrace")
    ]
    for r in traces["results"]:  # 12 matvecs on a 101,770-parameter Hessian: errors of a few percent to tens
        assert 0 <= r["rel_error"] < 1 and 0 < r["rel_stderr"] < 1 and 0 <= r["within_2_stderr"] <= 1
    assert report["startup"] is None
    assert set(report["headline"]["training_vmapped_over_sequential"]) == {"M1_b32", "M8_b32"}
    assert "vmap/seq" in done.stdout


@pytest.mark.parametrize(
    "argv,code,needle",
    [
        (["--models", "0"], 2, "--models"),
        (["--batch-sizes", "32,x"], 2, "--batch-sizes"),
        (["--curvature-loss", "mse"], 2, "--curvature-loss"),
        (["--models-per-block", "-1"], 2, "--models-per-block"),
        (["--data-dir", "{empty}"], 1, "--data-dir {empty}: lacks"),
    ],
)
def test_bad_input_is_one_line_with_its_exit_code(argv, code, needle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv, needle = [a.format(empty=tmp_path / "empty") for a in argv], needle.format(empty=tmp_path / "empty")
    assert bench.main([*argv, "--out", str(tmp_path / "b.json")]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "b.json").exists()


def test_the_entry_point_starts_without_jax_and_help_lists_every_flag():
    """``--host-devices`` must reach XLA_FLAGS before JAX starts: the package, its parser and its
    settings import no JAX; ``python -m experiments.bench --help`` works."""
    code = (
        "import sys; from experiments import bench; from experiments.bench import settings; "
        "settings.resolve_settings(bench.build_parser().parse_args(['--quick'])); print('jax' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
    done = subprocess.run([sys.executable, "-m", "experiments.bench", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    flags = ["--models", "--batch-sizes", "--train-limit", "--test-limit", "--repeats", "--gemm-size",
             "--sequential-max", "--curvature-models", "--curvature-examples", "--lanczos-steps", "--curvature-loss",
             "--no-curvature", "--no-traces", "--no-startup", "--trace-matvecs", "--trace-keys",
             "--startup-train-limit", "--models-per-block", "--compare-one-device", "--keras", "--host-devices",
             "--data", "--data-dir", "--out", "--quick", "--debug"]  # fmt: skip
    assert all(flag in done.stdout for flag in flags)


@pytest.mark.parametrize("loss", ["keras-ce", "mse"])
def test_the_exact_trace_of_a_one_hidden_layer_net_equals_the_dense_hessians(loss):
    """traces.exact_trace (per-example Hessians of the pre-activations and logits) against the trace of
    jax.hessian of the raveled batch loss, in float64, on a 12-6-4 MLP with a transform in the loss."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from experiments.bench import traces
    from scalelab.losses import get_loss
    from scalelab.models import MLP
    from scalelab.train import Batch, Hypers, batch_loss

    rng = np.random.default_rng(0)
    model, loss_fn = MLP(hidden=(6,), num_classes=4), get_loss(loss)
    batch = Batch(rng.integers(0, 256, (40, 12)).astype(np.float64), rng.integers(0, 4, 40), np.ones(40))
    hypers = Hypers(shift=rng.normal(size=12) * 10, scale=np.full(12, 1 / 60.0), lr=np.float64(1e-3))
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.PRNGKey(0), batch.x[:1]))
        flat, unravel = ravel_pytree(params)
        dense = jax.hessian(lambda w: batch_loss(model, loss_fn, unravel(w), hypers, batch)[0])(flat)
        expected = float(jnp.trace(dense))
    assert abs(expected) > 1e-3
    np.testing.assert_allclose(traces.exact_trace(model, loss_fn, hypers, params, batch), expected, rtol=1e-10)


def test_the_hvp_flop_count_is_xlas_for_the_benched_mlp():
    """curvature.hvp_flops_per_sample against XLA's cost analysis of the compiled HVP of 784-128-10 on
    256 examples (its count, matmuls plus elementwise work, measured 0.1% below ours)."""
    import functools

    import jax
    import jax.numpy as jnp

    from experiments.bench.curvature import hvp_flops_per_sample, mlp_widths
    from scalelab import curvature
    from scalelab.losses import get_loss
    from scalelab.models import MLP

    model, x, y = MLP(hidden=(128,)), jnp.ones((256, 784)), jnp.zeros(256, jnp.int32)
    params = model.init(jax.random.PRNGKey(0), x[:1])
    hvp = functools.partial(curvature.hvp, lambda p: get_loss("keras-ce")(model.apply(p, x), y).mean())
    cost = jax.jit(hvp).lower(params, params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert mlp_widths(params) == (784, 128, 10)
    ours = hvp_flops_per_sample(mlp_widths(params))
    assert ours == 6 * (784 * 128 + 128 * 10) + 10 * 128 * 10
    assert cost["flops"] / 256 == pytest.approx(ours, rel=0.01)


@pytest.mark.parametrize("hidden", [(128,), (64, 32)])
def test_the_lanczos_hvp_flop_count_is_xlas_for_the_tangent_work(hidden):
    """lanczos_hvp_flops_per_sample against XLA's cost analysis of the HVP's tangent map alone
    (``jax.linearize`` in the vector: the primal forward is computed once, as a loop hoists it), on
    256 examples; 784-128-10 and a deeper 784-64-32-10 (measured within 0.3%)."""
    import functools

    import jax.numpy as jnp

    from experiments.bench.curvature import lanczos_hvp_flops_per_sample, mlp_widths
    from scalelab import curvature
    from scalelab.losses import get_loss
    from scalelab.models import MLP

    model = MLP(hidden=hidden)
    x, y = jax.random.normal(jax.random.PRNGKey(1), (256, 784)), jnp.zeros(256, jnp.int32)
    params = model.init(jax.random.PRNGKey(0), x[:1])
    hvp = functools.partial(curvature.hvp, lambda p: get_loss("ce")(model.apply(p, x), y).mean(), params)
    _, tangent_map = jax.linearize(hvp, jax.tree.map(jnp.zeros_like, params))
    cost = jax.jit(tangent_map).lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    widths = mlp_widths(params)
    assert widths == (784, *hidden, 10)
    ours = lanczos_hvp_flops_per_sample(widths)
    assert cost["flops"] / 256 == pytest.approx(ours, rel=0.01)
    assert hidden != (128,) or ours == 416_768


def test_lanczos_loop_does_only_the_tangent_matmuls_on_the_data():
    """The claim behind lanczos_hvp_flops_per_sample: in the compiled top-eigenvalue program, the
    Lanczos loop's body multiplies by the data twice per product (``x V`` and ``x^T d(delta)``), the
    primal ``x W`` having been hoisted out of it."""
    import re

    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from experiments.bench.curvature import top_eigenvalue_fn
    from scalelab.losses import get_loss
    from scalelab.models import MLP
    from scalelab.train import Batch, Hypers

    model = MLP(hidden=(128,))
    x = jax.random.uniform(jax.random.PRNGKey(1), (256, 784), maxval=255.0)
    batch = Batch(x, jnp.arange(256, dtype=jnp.int32) % 10, jnp.ones(256))
    hypers = Hypers(shift=jnp.zeros(784), scale=jnp.full(784, 1 / 255), lr=jnp.float32(1e-3))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))
    top = top_eigenvalue_fn(model, get_loss("ce"), hypers)
    n = ravel_pytree(params)[0].size
    text = jax.jit(lambda p, v, b: top(p, v, b, 4)).lower(params, jnp.ones(n), batch).compile().as_text()
    computations = {m.group(1): m.group(0) for m in re.finditer(r"^(?:ENTRY )?%?([\w.\-]+) .*?^}", text, re.M | re.S)}

    def shape(operand: str, body: str) -> str:
        found = re.search(rf"%?{re.escape(operand)}(?:: | = )(\w+\[[0-9,]*\])", body)
        return found.group(1) if found else ""

    def data_dots(name: str, seen: set) -> int:  # dots with the (256, 784) data as an operand
        if name in seen or name not in computations:
            return 0
        seen.add(name)
        body = computations[name]
        operands = re.findall(r" (?:dot|convolution)\(%?([\w.\-]+), %?([\w.\-]+)\)", body)
        own = sum("f32[256,784]" in (shape(a, body), shape(b, body)) for a, b in operands)
        called = re.findall(r"(?:calls|body|to_apply)=%?([\w.\-]+)", body)
        return own + sum(data_dots(c, seen) for c in called)

    bodies = [m.group(1) for m in re.finditer(r"while\(.*?body=%?([\w.\-]+)", text)]
    assert len(bodies) == 1
    assert data_dots(bodies[0], set()) == 2


def test_startup_runs_a_study_cold_then_warm_in_fresh_processes(idx_folder):
    """startup_bench on a small IDX dataset: two child processes share one fresh cache directory, the
    first writes it and the second reads it; the figures are consistent with the epochs' end times.
    The bench's own study is the default one (tested below); here a one-model study keeps it quick."""
    import dataclasses

    from experiments.bench import startup
    from scalelab.config import CurvatureConfig, GridConfig

    default = startup.startup_config({"startup_train_limit": 256}, "idx", str(idx_folder))  # 256 train, 64 test
    small = dataclasses.replace(default, grid=GridConfig(inputs=("/255",), seeds=1),
                                curvature=CurvatureConfig(examples=32, lanczos_steps=4, density_steps=4))  # fmt: skip
    up = startup.startup_bench({"startup_train_limit": 256}, "idx", str(idx_folder), small)
    assert up["models"] == 1 and up["cache_entries"] >= 1
    for side in ("cold", "warm"):
        run = up[side]
        first, second = run["epoch_ends_s"]
        assert 0 < first < second and run["first_epoch_s"] == first
        assert run["start_to_first_step_s"] == pytest.approx(first - (second - first))
    assert up["warm_over_cold"] == pytest.approx(up["warm"]["first_epoch_s"] / up["cold"]["first_epoch_s"])
    assert up["warm_first_epoch_s"] == up["warm"]["first_epoch_s"] and isinstance(up["met"], bool)


def test_the_startup_study_is_the_default_study_for_two_epochs_without_report_or_params(idx_folder):
    from experiments.bench import startup
    from scalelab.config import RunConfig

    config = startup.startup_config({"startup_train_limit": 256}, "idx", str(idx_folder))
    assert config.num_models == 21  # the default grid: 3 seeds x 7 inputs
    assert (config.model, config.grid, config.curvature) == (RunConfig().model, RunConfig().grid, RunConfig().curvature)
    assert config.train.epochs == 2 and not config.output.report and not config.output.save_params


def test_the_runs_measurement_is_raced_vmapped_against_its_blocks(tiny_dataset, monkeypatch):
    """run_measurement_bench times measure_grid both ways on the same models; a tiny block budget
    forces blocks of one on this tiny net, and both give the same top eigenvalues."""
    from experiments.bench import curvature
    from scalelab import measure
    from scalelab.config import CurvatureConfig, DataConfig, ModelConfig, RunConfig

    monkeypatch.setattr(measure, "CPU_MEASURE_BLOCK_BYTES", 1)
    config = RunConfig(data=DataConfig(name="synthetic"), model=ModelConfig(hidden=(8,)),
                       curvature=CurvatureConfig(examples=32, lanczos_steps=6, density_steps=6))  # fmt: skip
    row = curvature.run_measurement_bench({"measurement_models": 3, "repeats": 1}, tiny_dataset, config)
    assert row["models"] == 3 and row["examples"] == 32 and row["lanczos_steps"] == 6
    assert row["models_per_block"] == (1 if jax.default_backend() == "cpu" else 0)
    assert row["vmapped_s"] > 0 and row["blocked_s"] > 0
    assert row["blocked_over_vmapped"] == pytest.approx(row["vmapped_s"] / row["blocked_s"])
    assert row["top_eig_max_rel_diff"] < 1e-4
