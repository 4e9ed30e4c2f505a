"""The benchmark program: its JSON's structure and sanity, and its usage errors. Never its speed."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
         "--out", str(out)],
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
    assert report["keras"]["samples_per_s"] is None

    curv = report["curvature"]
    assert [r["models"] for r in curv["results"]] == [1, 4]
    assert curv["converged_on_model_0"] and curv["model_0_rel_residual"] <= 1e-3
    assert curv["worst_rel_residual"] <= 1e-3  # the other seeds converge as fast at initialisation
    assert all(r["vmapped_over_sequential"] > 0 and r["eigenvalue_range"][0] > 0 for r in curv["results"])
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
             "--no-curvature", "--models-per-block", "--compare-one-device", "--keras", "--host-devices", "--data",
             "--data-dir", "--out", "--quick", "--debug"]  # fmt: skip
    assert all(flag in done.stdout for flag in flags)
