"""Configs as data: the CLI is generated from the dataclasses, files and flags layer, errors are one line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import scale_grid
from scalelab import flags
from scalelab.config import (
    CurvatureConfig,
    GridConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    free_fields,
    read_config_file,
)
from scalelab.errors import ScalelabError, UsageError
from scalelab.optim import OptimizerConfig


def leaf_fields(with_programs: bool = False) -> set[str]:
    fields = {
        f"{s.name}.{f.name}" for s in dataclasses.fields(RunConfig) for f in dataclasses.fields(s.default_factory())
    }
    # grid.programs: set through list-valued static flags; optimizer.eps/weight_decay: through --eps and
    # --weight-decay (grid.epsilons/weight_decays), whose one value is the optimiser's own
    return fields if with_programs else fields - {"grid.programs", "optimizer.eps", "optimizer.weight_decay"}


def test_every_config_field_has_exactly_one_flag_and_every_flag_a_field():
    generated = list(flags.config_flags())
    assert {f.dest for f in generated} == leaf_fields()
    names = [f.flag for f in generated]
    assert len(names) == len(set(names)), "two fields share a flag"


def test_scale_grid_help_lists_every_generated_flag(capsys):
    with pytest.raises(SystemExit):
        scale_grid.main(["--help"])
    text = capsys.readouterr().out
    assert all(f.flag in text for f in flags.config_flags())


def parse(*argv):
    return scale_grid.build_parser().parse_args([str(a) for a in argv])


def test_flags_override_only_what_they_name():
    config = scale_grid.config_from_args(parse("--epochs", 7, "--hidden", "64,32", "--no-curvature"), RunConfig(), {})
    assert config.train.epochs == 7 and config.model.hidden == (64, 32) and not config.curvature.enabled
    assert config.grid == RunConfig().grid and config.optimizer == RunConfig().optimizer


def test_another_optimizer_without_lr_takes_its_default_lr_and_an_explicit_lr_wins():
    assert scale_grid.config_from_args(parse("--optimizer", "sgd"), RunConfig(), {}).lrs == (1e-2,)
    assert scale_grid.config_from_args(parse("--optimizer", "sgd", "--lr", "0.5"), RunConfig(), {}).lrs == (0.5,)
    assert RunConfig(optimizer=OptimizerConfig(name="momentum")).lrs == (1e-2,)


def test_quick_preset_then_flags(tmp_path):
    config = scale_grid.config_from_args(parse("--quick", "--seeds", 5), RunConfig(), scale_grid.QUICK)
    assert config.grid.seeds == 5 and config.train.epochs == 2 and config.data.train_limit == 2048


def test_toml_file_then_flags_over_it(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('[grid]\ninputs = ["/1", "/255"]\nseeds = 4\n[train]\nepochs = 3\n[model]\nhidden = [16, 8]\n')
    config = scale_grid.config_from_args(parse("--config", path, "--epochs", 9), RunConfig(), {})
    assert config.grid.inputs == ("/1", "/255") and config.grid.seeds == 4 and config.model.hidden == (16, 8)
    assert config.train.epochs == 9  # the flag wins over the file


def test_a_runs_own_config_json_reproduces_its_config(tmp_path):
    original = RunConfig(
        model=ModelConfig(hidden=(32,), activation="tanh"), optimizer=OptimizerConfig(name="sgd"),
        train=TrainConfig(loss="mse", epochs=2), grid=GridConfig(inputs=("zscore",), seeds=2, lrs=(0.1, 0.2)),
        curvature=CurvatureConfig(top_k=2, trace_probes=3),
    )  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(original.to_dict()))
    assert read_config_file(path) == original
    assert RunConfig.from_dict(original.to_dict()) == original


def test_a_version_1_config_reads_with_the_new_sections_defaulted():
    v1 = {k: v for k, v in RunConfig().to_dict().items() if k not in ("output", "engine")}
    v1["schema_version"] = 1
    assert RunConfig.from_dict(v1) == RunConfig()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[grid]\ninputs = ["/0"]\n', "divisor"),
        ('[grid]\ninputs = ["/255", "/255"]\n', "more than once"),
        ("[model]\nactivation = 'swish'\n", "activation"),
        ("[train]\nloss = 'hinge'\n", "loss"),
        ("[optimizer]\nname = 'lion'\n", "optimizer"),
        ("[gird]\nseeds = 2\n", "unknown section 'gird'"),
        ("[grid]\nseed = 2\n", "unknown field 'seed'"),
        ("[train]\nepochs = -1\n", "--epochs"),
        ("[curvature]\ntop_k = 20\n", "--lanczos-steps"),
        ("grid = 3\n", "section 'grid'"),
        ("[grid\n", "not valid TOML"),
        ("schema_version = 99\n", "schema version 99"),
    ],
)
def test_bad_config_files_are_one_usage_error_naming_the_problem(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        read_config_file(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bad_values_raise_the_same_error_through_the_python_api():
    with pytest.raises(UsageError, match="activation"):
        ModelConfig(activation="swish")
    with pytest.raises(UsageError, match="unknown input transform"):
        GridConfig(inputs=("/255", "scale"))
    with pytest.raises(UsageError, match="--trace-probes"):
        CurvatureConfig(trace_probes=1)


def test_a_missing_config_file_and_bad_json_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        read_config_file(tmp_path / "nowhere.toml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="not valid JSON"):
        read_config_file(tmp_path / "bad.json")


def test_only_output_and_engine_fields_are_free_on_resume():
    assert free_fields() == {f for f in leaf_fields(with_programs=True) if f.startswith(("output.", "engine."))}
    base = RunConfig()
    changed = dataclasses.replace(base, engine=dataclasses.replace(base.engine, models_per_block=3))
    assert base.differences(changed) == []
    longer = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=9))
    assert base.differences(longer) == ["train.epochs"]


def test_a_foreign_run_directory_config_is_a_runtime_error(tmp_path):
    from scalelab.results import RunDir

    (tmp_path / "config.json").write_text(json.dumps({"schema_version": 7}))
    with pytest.raises(ScalelabError) as info:
        RunDir.open(tmp_path).config()
    assert not isinstance(info.value, UsageError) and "schema version 7" in str(info.value)


def test_a_seed_list_is_the_seed_axis_and_seeds_counts_it():
    assert scale_grid.config_from_args(parse("--seed-list", "3,7,11"), RunConfig(), {}).grid.seed_values == (3, 7, 11)
    ranged = scale_grid.config_from_args(parse("--seed-list", "0-3,10"), RunConfig(), {}).grid
    assert ranged.seed_values == (0, 1, 2, 3, 10) and ranged.seeds == 5
    listed = RunConfig(grid=GridConfig(seed_list=(5, 6)))
    assert scale_grid.config_from_args(parse("--seeds", 4), listed, {}).grid.seed_values == (0, 1, 2, 3)
    with_quick = scale_grid.config_from_args(parse("--quick", "--seed-list", "9"), RunConfig(), scale_grid.QUICK)
    assert with_quick.grid.seed_values == (9,)


BAD_SEEDS = [
    (["--seed-list", "3,3"], "repeats 3"),
    (["--seed-list", "5-2"], "ranges"),
    (["--seeds", "2", "--seed-list", "1,2"], "give one of them"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD_SEEDS)
def test_bad_seed_lists_are_one_line_usage_errors(argv, needle, capsys):
    assert scale_grid.main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
