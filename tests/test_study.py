"""scalelab.study: run(config) trains a grid into a run directory, load(run_dir) reads it back."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

import scalelab
from experiments import scale_grid
from scalelab import study
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, OutputConfig, RunConfig, TrainConfig
from scalelab.errors import ScalelabError

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
