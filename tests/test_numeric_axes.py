"""Numeric axes beside inputs and lr: the init scale (applied to the initial weights), Adam's eps and
AdamW's weight decay (vmapped), and a program's own inputs and seeds."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import scale_grid
from scalelab import study
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, OutputConfig, RunConfig, TrainConfig
from scalelab.data import load_dataset
from scalelab.optim import OptimizerConfig
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


def optimizer_config(folder, name: str, inputs, **axis) -> RunConfig:
    cfg = config(folder, inputs=inputs)
    curvature = CurvatureConfig(enabled=True, examples=32, lanczos_steps=4, density_probes=0)
    grid = dataclasses.replace(cfg.grid, **axis)
    return dataclasses.replace(cfg, optimizer=OptimizerConfig(name=name), grid=grid, curvature=curvature)


@pytest.mark.parametrize(
    ("name", "axis", "field", "values"),
    [("adam", "eps", "epsilons", (1e-7, 0.5)), ("adamw", "weight_decay", "weight_decays", (0.0, 20.0))],
)
def test_an_optimizer_axis_trains_each_model_as_it_would_with_that_value_alone(
    idx_folder, tmp_path, name, axis, field, values
):
    # eps 0.5 (against sqrt(v) ~ |g|) and weight decay 20 (2% a step at lr 1e-3) change the trajectory
    # visibly, so a model trained with its neighbour's value would fail the comparison.
    cfg = optimizer_config(idx_folder, name, inputs=("/255", "zscore"), **{field: values})
    run = study.run(cfg, tmp_path / "grid", progress=False)
    assert [a.name for a in run.axes] == ["seed", "inputs", "lr", axis] and cfg.num_models == 4
    rows = {(r["inputs"], r[axis]): r for r in run.metrics()}
    curvature = {(r["inputs"], r[axis]): r for r in run.curvature() if r["epoch"] == 1}
    assert set(rows) == {(i, v) for i in ("/255", "zscore") for v in values}
    for value in values[1:]:  # the axis's other value alone (the first is the other models of the grid)
        opt = dataclasses.replace(cfg.optimizer, **{"eps" if axis == "eps" else axis: value})
        alone = study.run(dataclasses.replace(cfg, optimizer=opt, grid=dataclasses.replace(cfg.grid, **{field: None})),
                          tmp_path / f"alone-{value}", progress=False)  # fmt: skip
        for row in alone.metrics():
            for column in ("train_loss", "test_loss", "grad_norm"):
                np.testing.assert_allclose(rows[(row["inputs"], value)][column], row[column], rtol=2e-4)
        for row in (r for r in alone.curvature() if r["epoch"] == 1):
            got = curvature[(row["inputs"], value)]
            np.testing.assert_allclose(got["top_eig_1"], row["top_eig_1"], rtol=2e-3)
            np.testing.assert_allclose(got["adam_sharpness"], row["adam_sharpness"], rtol=2e-3)
    eps_or_decay = [rows[("/255", v)]["test_loss"] for v in values]
    assert abs(eps_or_decay[0] - eps_or_decay[1]) > 1e-3  # the axis changes the training


def test_one_eps_or_weight_decay_is_the_optimizers_own_and_adds_no_axis():
    cfg = RunConfig(optimizer=OptimizerConfig(name="adamw"), grid=GridConfig(epsilons=(1e-3,), weight_decays=(0.1,)))
    assert (cfg.optimizer.eps, cfg.optimizer.weight_decay) == (1e-3, 0.1)
    assert cfg.grid.epsilons is None and cfg.grid.weight_decays is None
    assert [a.name for a in grid_axes(cfg)] == ["seed", "inputs", "lr"]


def test_eps_and_weight_decay_flags_are_axes_only_with_several_values():
    cfg = scale_grid.config_from_args(
        scale_grid.build_parser().parse_args(
            ["--quick", "--optimizer", "adamw", "--eps", "1e-7,1e-3", "--weight-decay", "0.1"]
        ),
        RunConfig(), scale_grid.QUICK,
    )  # fmt: skip
    assert cfg.grid.epsilons == (1e-7, 1e-3) and cfg.optimizer.weight_decay == 0.1
    assert [a.name for a in grid_axes(cfg)][-1] == "eps"
    assert cfg.num_models == 2 * 3 * 2  # QUICK: 2 seeds x 3 inputs, times 2 eps


def test_a_program_may_run_on_its_own_inputs_and_seeds(idx_folder, tmp_path):
    programs = (
        {"train.loss": "keras-ce"},
        {"train.loss": "ce", "grid.inputs": ["/1"], "grid.seeds": 1},
    )
    cfg = dataclasses.replace(config(idx_folder), grid=GridConfig(inputs=("/1", "/255"), seeds=2, programs=programs))
    assert cfg.num_models == 2 * 2 + 1
    run = study.run(cfg, tmp_path / "run", progress=False)
    got = sorted((r["loss_name"], r["inputs"], r["seed"]) for r in run.metrics())
    want = sorted([("keras-ce", i, s) for i in ("/1", "/255") for s in (0, 1)] + [("ce", "/1", 0)])
    assert got == want
    assert [a.name for a in run.axes] == ["loss_name", "seed", "inputs", "lr"]
    loss = run.to_xarray()["test_loss"].sel(epoch=1, lr=1e-3)  # the study's box; the models it lacks are NaN
    assert np.isnan(loss.sel(loss_name="ce", inputs="/255")).all() and np.isnan(loss.sel(loss_name="ce", seed=1)).all()
    assert (
        np.isfinite(loss.sel(loss_name="ce", inputs="/1", seed=0)) and np.isfinite(loss.sel(loss_name="keras-ce")).all()
    )
