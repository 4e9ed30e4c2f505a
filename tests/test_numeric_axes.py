"""Numeric axes beside inputs and lr: the init scale (vmapped, applied to the initial weights)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import scale_grid
from scalelab import study
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, OutputConfig, RunConfig, TrainConfig
from scalelab.data import load_dataset
from scalelab.planning import plan_grid
from scalelab.schema import grid_axes


def config(folder, **grid) -> RunConfig:
    return RunConfig(
        data=DataConfig(name="idx", data_dir=str(folder)), model=ModelConfig(hidden=(8,)),
        train=TrainConfig(epochs=1, batch_size=32), grid=GridConfig(seeds=1, **grid),
        curvature=CurvatureConfig(enabled=False), output=OutputConfig(report=False),
    )  # fmt: skip


def preactivations(run, plan, model: int, epoch: int = 0) -> np.ndarray:
    params = run.params(epoch, model)["params"]["Dense_0"]
    m = next(m for m in plan.models if m.index == model)
    v = plan.models.index(m) % plan.num_variants
    x = (jnp.asarray(plan.data.train_x[:64], jnp.float32) - plan.hypers.shift[v]) * plan.hypers.scale[v]
    return np.asarray(x @ params["kernel"] + params["bias"])


def test_a_first_layer_init_scale_of_c_gives_the_preactivations_of_inputs_times_c(idx_folder, tmp_path):
    # c = 4 is a power of two, so both sides round identically: equality is exact.
    cfg = config(idx_folder, inputs=("/255", "/63.75"), init_scales=(1.0, 4.0))
    run = study.run(cfg, tmp_path / "run", progress=False)
    plan = plan_grid(cfg, load_dataset("idx", idx_folder))
    by = {(m["inputs"], m["init_scale"]): m.index for m in plan.models}
    scaled_weights = preactivations(run, plan, by[("/255", 4.0)])
    scaled_inputs = preactivations(run, plan, by[("/63.75", 1.0)])
    np.testing.assert_array_equal(scaled_weights, scaled_inputs)
    np.testing.assert_array_equal(scaled_weights, 4 * preactivations(run, plan, by[("/255", 1.0)]))
    assert [a.name for a in run.axes] == ["seed", "inputs", "lr", "init_scale"]
    assert {(r["inputs"], r["init_scale"]) for r in run.metrics()} == set(by)


def test_all_layers_scales_every_kernel_and_no_bias(idx_folder, tmp_path):
    cfg = config(idx_folder, inputs=("/255",), init_scales=(1.0, 0.5), init_scale_layers="all")
    run = study.run(cfg, tmp_path / "run", progress=False)
    one, half = (run.params(0, m)["params"] for m in (0, 1))
    for layer in ("Dense_0", "Dense_1"):
        np.testing.assert_array_equal(half[layer]["kernel"], 0.5 * one[layer]["kernel"])
        assert not half[layer]["bias"].any()


def test_the_default_init_scale_adds_no_axis_and_keeps_the_tables():
    assert [a.name for a in grid_axes(RunConfig())] == ["seed", "inputs", "lr"]


@pytest.mark.parametrize(("argv", "needle"), [(["--init-scale", "0"], "--init-scale"),
                                              (["--init-scale", "1,1"], "more than once"),
                                              (["--init-scale-layers", "some"], "first or all")])  # fmt: skip
def test_bad_init_scales_are_one_line_usage_errors(argv, needle, capsys):
    assert scale_grid.main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_an_init_scale_axis_multiplies_the_models_and_resumes(idx_folder, tmp_path):
    cfg = config(idx_folder, inputs=("/1", "/255"), init_scales=(0.5, 2.0))
    assert cfg.num_models == 4
    study.run(cfg, tmp_path / "run", progress=False)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    study.run(longer, tmp_path / "run", resume=True, progress=False)
    straight = study.run(longer, tmp_path / "straight", progress=False)
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == (straight.path / "metrics.csv").read_bytes()
