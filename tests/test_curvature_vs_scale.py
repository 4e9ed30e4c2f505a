"""The divisor sweep: its scale-law arithmetic, and the experiment end to end on a tiny dataset."""

import json
import math

import pytest

from experiments import curvature_vs_scale


def test_divisors_are_log_spaced_transform_names():
    assert curvature_vs_scale.divisors(0, 4, 5) == ["/1", "/10", "/100", "/1000", "/10000"]
    assert curvature_vs_scale.divisors(0, 1, 3) == ["/1", "/3.16", "/10"]


def _row(divisor, step, top, layer0, lr=1e-3, adam=math.nan, skipped=""):
    return {
        "inputs": f"/{divisor:g}",
        "step": step,
        "skipped": skipped,
        "top_eig_1": top,
        "layer_0_top_eig": layer0,
        "clipped_wrong_frac": 0.0,
        "adam_sharpness": adam,
        "sgd_threshold": 2 / lr,
        "adam_threshold": 38 / lr,
    }


def test_scale_law_recovers_an_inverse_square_and_the_first_crossing():
    rows = []
    for c in (1.0, 10.0, 100.0):
        rows.append(_row(c, 0, 5e3 / c**2, 3e3 / c**2))
        rows.append(_row(c, 50, 3e3 / c, 1.0, adam=5e4 if c == 1 else 10.0))
        rows.append(_row(c, 100, 1.0, 1.0, skipped="diverged in epoch 1"))
    law = curvature_vs_scale.scale_law(rows)
    exponents = [e["exponent"] for e in law["exponents_at_init"]["layer_0_top_eig"]]
    assert exponents == pytest.approx([-2.0, -2.0])
    by_c = {d["divisor"]: d for d in law["divisors"]}
    assert by_c[1.0]["first_step_above_sgd_threshold"] == 0  # 5000 > 2000 at init
    assert by_c[10.0]["first_step_above_sgd_threshold"] is None
    assert by_c[1.0]["first_step_above_adam_threshold"] == 50
    assert by_c[100.0]["first_step_above_adam_threshold"] is None


def test_quick_sweep_end_to_end(idx_folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--quick", "--train-limit", "200", "--test-limit", "64", "--data", "idx", "--data-dir", idx_folder,
            "--out", out, "--no-report", "--no-progress"]  # fmt: skip
    code = curvature_vs_scale.main([str(a) for a in argv])
    assert code == 0
    law = json.loads((out / "scale_law.json").read_text())
    assert [d["divisor"] for d in law["divisors"]] == [1, 17.8, 316, 5620, 100000]
    assert all(d["init_layer_0_top_eig"] >= 0 for d in law["divisors"])
    assert "local exponent" in capsys.readouterr().out


def test_negative_exponent_is_a_usage_error(capsys):
    assert curvature_vs_scale.main(["--max-exponent", "-1"]) == 2
    assert "--max-exponent" in capsys.readouterr().err
