"""scalelab.study: run(config) trains a grid into a run directory, load(run_dir) reads it back."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import scalelab
from experiments import scale_grid
from scalelab import study
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, OutputConfig, RunConfig, TrainConfig
from scalelab.errors import ScalelabError
from scalelab.optim import OptimizerConfig
from scalelab.schema import final_rows

README = Path(__file__).resolve().parents[1] / "README.md"


def tiny(folder) -> RunConfig:
    return RunConfig(
        data=DataConfig(name="idx", data_dir=str(folder)), model=ModelConfig(hidden=(8,)),
        train=TrainConfig(epochs=2, batch_size=32), grid=GridConfig(inputs=("/1", "/255"), seeds=2),
        curvature=CurvatureConfig(examples=32, lanczos_steps=4, density_probes=0),
        output=OutputConfig(report=False),
    )  # fmt: skip


def test_run_then_load_gives_typed_tables_summary_params_and_status(idx_folder, tmp_path):
    run = study.run(tiny(idx_folder), tmp_path / "run", progress=False)
    again = scalelab.load(tmp_path / "run")
    assert again.config == run.config == tiny(idx_folder)
    assert [a.name for a in again.axes] == ["seed", "inputs", "lr"]
    metrics = again.metrics()
    assert len(metrics) == 4 * 2 and isinstance(metrics[0]["seed"], int) and isinstance(metrics[0]["lr"], float)
    assert {r["model"] for r in again.curvature()} == {0, 1, 2, 3}
    assert len(again.summary()["groups"]) == 2 and again.status["state"] == "complete"
    assert again.params(2, 3)["params"]["Dense_0"]["kernel"].shape == (64, 8)
    assert [m.columns for m in again.models][1] == {"model": 1, "seed": 0, "inputs": "/255", "lr": 1e-3}


def test_the_python_api_and_the_cli_write_the_same_numbers(idx_folder, tmp_path, capsys):
    config = dataclasses.replace(tiny(idx_folder), curvature=CurvatureConfig(enabled=False))
    study.run(config, tmp_path / "api", progress=False)
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert scale_grid.main(["--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert (tmp_path / "api" / "metrics.csv").read_bytes() == (tmp_path / "cli" / "metrics.csv").read_bytes()
    assert RunConfig.from_dict(json.loads((tmp_path / "cli" / "config.json").read_text())) == config


def test_a_bad_config_leaves_no_run_directory(idx_folder, tmp_path):
    config = dataclasses.replace(tiny(idx_folder), train=TrainConfig(batch_size=10_000))
    with pytest.raises(ScalelabError, match="--batch-size"):
        study.run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_load_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ScalelabError, match="no config.json"):
        scalelab.load(tmp_path)


def test_the_readme_example_runs_as_written(idx_folder, tmp_path, monkeypatch, capsys):
    """The README's Python block, on the tiny IDX data instead of Fashion-MNIST."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    code = block.group(1).replace('DataConfig(train_limit=2048, test_limit=1000)',
                                  f'DataConfig(name="idx", data_dir={str(idx_folder)!r})')  # fmt: skip
    assert 'name="idx"' in code and len(code.strip().splitlines()) <= 14
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("TrainConfig(epochs=2)", "TrainConfig(epochs=1)"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in printed if line] == ["/1", "/255", "/1000"]
    assert (tmp_path / "runs" / "notebook" / "report.html").exists()


def test_pandas_and_xarray_views_round_trip_the_csv(idx_folder, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("xarray")
    config = dataclasses.replace(
        tiny(idx_folder), optimizer=OptimizerConfig(name="sgd"), grid=GridConfig(inputs=("/1", "/255"), seeds=2,
        seed_list=(3, 7), lrs=(1e-2, 1e30)), curvature=CurvatureConfig(enabled=False), train=TrainConfig(epochs=3),
    )  # fmt: skip
    run = study.run(config, tmp_path / "run", progress=False)
    frame = run.to_pandas()
    from_csv = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(frame.columns) == list(from_csv.columns) and len(frame) == 2 * 2 * 2 * 3
    pd.testing.assert_frame_equal(frame.astype(from_csv.dtypes.to_dict()), from_csv, check_exact=True)
    data = run.to_xarray()
    assert dict(data.sizes) == {"seed": 2, "inputs": 2, "lr": 2, "epoch": 3}
    assert list(data["seed"].values) == [3, 7] and list(data["epoch"].values) == [1, 2, 3]
    ends = {r["model"]: r["epoch"] for r in final_rows(frame.to_dict("records"))}
    assert any(end < 3 for end in ends.values())  # lr 1e30 on /255 diverges: the NaN branch is exercised
    for row in frame.to_dict("records"):
        cell = data.sel(seed=row["seed"], inputs=row["inputs"], lr=row["lr"], epoch=row["epoch"])
        if row["epoch"] > ends[row["model"]]:  # stopped or diverged before: frozen since, so NaN in the view
            assert np.isnan(float(cell["test_loss"])) and np.isnan(float(cell["train_acc"]))
        else:
            np.testing.assert_equal(float(cell["test_loss"]), row["test_loss"])


def test_without_the_analysis_extra_the_views_name_it(idx_folder, tmp_path, monkeypatch):
    import builtins

    run = study.run(dataclasses.replace(tiny(idx_folder), curvature=CurvatureConfig(enabled=False)), tmp_path / "r",
                    progress=False)  # fmt: skip
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name.split(".")[0] in ("pandas", "xarray"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    monkeypatch.delitem(sys.modules, "pandas", raising=False)
    with pytest.raises(ScalelabError, match=r"pip install -e '\.\[analysis\]'"):
        run.to_pandas()
