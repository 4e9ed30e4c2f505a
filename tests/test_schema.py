"""The run-directory schema: named axes, model ids, typed rows and per-setting summaries."""

from __future__ import annotations

import math

from scalelab import schema
from scalelab.config import GridConfig, RunConfig


def axes():
    return schema.grid_axes(RunConfig(grid=GridConfig(inputs=("/1", "zscore"), seeds=2, lrs=(1e-3, 1e-2))))


def test_models_are_the_product_of_the_axes_last_fastest():
    models = schema.grid_models(axes())
    assert len(models) == 2 * 2 * 2
    assert [m.index for m in models] == list(range(8))
    assert models[5].columns == {"model": 5, "seed": 1, "inputs": "/1", "lr": 1e-2}
    assert models[5]["inputs"] == "/1" and models[5].setting == ("/1", 1e-2)


def test_metric_columns_start_with_the_model_and_the_axes():
    assert schema.metric_columns(axes())[:5] == ["model", "seed", "inputs", "lr", "epoch"]


def test_rows_are_typed_by_their_axis():
    row = {"model": "3", "seed": "1", "inputs": "/1", "lr": "0.01", "epoch": "2", "train_loss": "nan",
           "train_acc": "0.5", "test_loss": "1.5", "test_acc": "0.4", "grad_norm": "2", "stopped": "0",
           "diverged": "1"}  # fmt: skip
    parsed = schema.parse_metrics_row(row, axes())
    assert parsed["seed"] == 1 and parsed["lr"] == 0.01 and parsed["inputs"] == "/1" and parsed["epoch"] == 2
    assert parsed["diverged"] is True and parsed["stopped"] is False and math.isnan(parsed["train_loss"])
    assert schema.parse_curvature_value("seed", "1.0", axes(), "x") == 1
    assert schema.parse_curvature_value("inputs", "/1", axes(), "x") == "/1"
    assert math.isnan(schema.parse_curvature_value("step", "", axes(), "x"))


def test_summary_groups_by_every_axis_but_the_seed_and_skips_diverged_models():
    rows = []
    for m in schema.grid_models(axes()):
        diverged = m.index == 7
        numbers = {"train_loss": float(m.index), "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.1 * m["seed"]}
        rows.append({**m.columns, "epoch": 1, **numbers, "grad_norm": 1.0, "stopped": False, "diverged": diverged})
    summary = schema.summarize(rows, axes())
    assert summary["axes"] == ["inputs", "lr"]
    groups = {(g["inputs"], g["lr"]): g for g in summary["groups"]}
    assert set(groups) == {("/1", 1e-3), ("/1", 1e-2), ("zscore", 1e-3), ("zscore", 1e-2)}
    assert groups[("/1", 1e-3)]["train_loss"] == {"mean": 2.0, "min": 0.0, "max": 4.0}  # models 0 and 4
    assert groups[("zscore", 1e-2)]["diverged"] == 1 and groups[("zscore", 1e-2)]["train_loss"]["max"] == 3.0


def test_no_axis_name_is_also_a_measured_column():
    from scalelab import measure
    from scalelab.config import STATIC_AXES

    names = {*STATIC_AXES.values(), "seed", "inputs", "lr"}
    measured = set(schema.METRIC_FIELDS) | set(measure.curvature_columns((), 3, 2))
    assert not names & measured
