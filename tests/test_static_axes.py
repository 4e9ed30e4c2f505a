"""Static axes: several compiled programs (activation, optimiser, loss, widths, ...) in one study."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from experiments import scale_grid
from scalelab import flags, study
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, OutputConfig, RunConfig, TrainConfig
from scalelab.schema import grid_axes, study_models

from .test_grid import GRID_ATOL, GRID_RTOL


def base(folder) -> RunConfig:
    return RunConfig(
        data=DataConfig(name="idx", data_dir=str(folder)), model=ModelConfig(hidden=(8,)),
        train=TrainConfig(epochs=2, batch_size=32), grid=GridConfig(inputs=("/1", "/255"), seeds=2, lrs=(1e-2, 3e-2)),
        curvature=CurvatureConfig(examples=16, lanczos_steps=4, density_probes=0), output=OutputConfig(report=False),
    )  # fmt: skip


def parse(*argv) -> RunConfig:
    args = scale_grid.build_parser().parse_args([str(a) for a in argv])
    return scale_grid.config_from_args(args, RunConfig(), {})


def test_list_flags_make_the_product_of_programs_and_single_values_stay_fields():
    config = parse("--activation", "relu,sigmoid", "--optimizer", "adam,sgd", "--hidden", "16", "8,8")
    assert len(config.grid.programs) == 2 * 2 * 2 and config.model.activation == "relu"
    names = [a.name for a in grid_axes(config)]
    assert names == ["hidden", "activation", "optimizer", "seed", "inputs", "lr"]
    by_program = {p: c for p, c in config.programs()}
    sgd = next(c for p, c in by_program.items() if dict(p)["optimizer.name"] == "sgd")
    assert sgd.lrs == (1e-2,) and sgd.optimizer.name == "sgd"  # each optimiser's own default lr
    assert parse("--activation", "sigmoid").grid.programs == ()


def test_a_config_file_lists_bundles_not_a_product(tmp_path):
    path = tmp_path / "bundles.toml"
    path.write_text(
        '[[grid.programs]]\n"model.activation" = "relu"\n"optimizer.name" = "adam"\n"train.loss" = "keras-ce"\n'
        '[[grid.programs]]\n"model.activation" = "sigmoid"\n"optimizer.name" = "sgd"\n"train.loss" = "mse"\n'
    )
    args = scale_grid.build_parser().parse_args(["--config", str(path)])
    config = scale_grid.config_from_args(args, RunConfig(), {})
    assert [dict(p)["train.loss"] for p in config.grid.programs] == ["keras-ce", "mse"]
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_two_static_and_two_numeric_axes_write_every_combination_once_each_as_if_alone(idx_folder, tmp_path):
    config = dataclasses.replace(
        base(idx_folder), grid=dataclasses.replace(base(idx_folder).grid, programs=(
            {"model.activation": "relu", "train.loss": "ce"}, {"model.activation": "tanh", "train.loss": "mse"},
            {"model.activation": "tanh", "train.loss": "ce"},
        )),
    )  # fmt: skip
    run = study.run(config, tmp_path / "study", progress=False)
    rows = run.metrics()
    keys = [(r["activation"], r["loss_name"], r["seed"], r["inputs"], r["lr"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * 2 * 2 * 2 * 2
    assert {(r["activation"], r["loss_name"]) for r in rows} == {("relu", "ce"), ("tanh", "mse"), ("tanh", "ce")}
    assert [m.columns for m in study_models(config)] == [
        {"model": r["model"], **{k: r[k] for k in ("activation", "loss_name", "seed", "inputs", "lr")}}
        for r in rows if r["epoch"] == 1
    ]  # fmt: skip
    curvature = run.curvature()
    assert {r["loss_name"] for r in curvature} == {"ce", "mse"} and len(curvature) == 24 * 3  # init + 2 epochs
    summary = run.summary()
    assert summary["axes"] == ["activation", "loss_name", "inputs", "lr"] and len(summary["groups"]) == 3 * 4
    # One program trained alone (its own study) gives the same numbers as inside the study.
    alone = dataclasses.replace(
        config, model=ModelConfig(hidden=(8,), activation="tanh"), train=dataclasses.replace(config.train, loss="mse"),
        grid=dataclasses.replace(config.grid, programs=()),
    )  # fmt: skip
    alone_rows = study.run(alone, tmp_path / "alone", progress=False).metrics()
    inside = [r for r in rows if (r["activation"], r["loss_name"]) == ("tanh", "mse")]
    assert len(inside) == len(alone_rows)
    for a, b in zip(inside, alone_rows, strict=True):
        assert (a["seed"], a["inputs"], a["lr"], a["epoch"]) == (b["seed"], b["inputs"], b["lr"], b["epoch"])
        for key in ("train_loss", "test_loss", "grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=GRID_RTOL, atol=GRID_ATOL)


def test_programs_of_different_depths_share_one_curvature_table(idx_folder, tmp_path):
    config = dataclasses.replace(
        base(idx_folder), train=dataclasses.replace(base(idx_folder).train, epochs=1),
        grid=dataclasses.replace(base(idx_folder).grid, lrs=(1e-2,), programs=(
            {"model.hidden": (8,)}, {"model.hidden": (8, 4)},
        )),
    )  # fmt: skip
    run = study.run(config, tmp_path / "deep", progress=False)
    rows = run.curvature()
    shallow = [r for r in rows if r["hidden"] == "8"]
    deep = [r for r in rows if r["hidden"] == "8-4"]
    assert shallow and deep and all(np.isnan(r["dead_frac_1"]) for r in shallow)
    assert all(np.isfinite(r["dead_frac_1"]) for r in deep)
    assert run.params(1, deep[0]["model"])["params"]["Dense_1"]["kernel"].shape == (8, 4)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--activation", "relu,swish"], "unknown activation 'swish'"),
        (["--loss", "ce,ce"], "more than once"),
        (["--optimizer", "adam,"], "unknown optimizer ''"),
        (["--batch-size", "32,0"], "--batch-size"),
        (["--hidden", "8", "8,0"], "--hidden"),
    ],
)
def test_bad_static_axis_values_are_one_line_usage_errors(argv, needle, capsys):
    assert scale_grid.main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_single_value_for_a_static_axis_of_the_base_applies_to_every_program():
    listed = parse("--activation", "relu,tanh", "--optimizer", "adam,sgd")
    both = flags.apply(listed, {"model": {"activation": "tanh"}})
    assert [dict(p) for p in both.grid.programs] == [{"optimizer.name": "adam"}, {"optimizer.name": "sgd"}]
    assert both.model.activation == "tanh" and both.num_models == listed.num_models // 2
    assert flags.apply(parse("--activation", "relu,tanh"), {"model": {"activation": "relu"}}).grid.programs == ()
