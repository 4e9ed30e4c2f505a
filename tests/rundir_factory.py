"""Small synthetic run directories in the format of scalelab/schema.py, for the analysis tests.

Each input transform gets an ``Outcome``: what its models measure. Seeds differ by a small known
factor, and so do the values of every other setting axis, so medians, ranges and every number the
report prints can be predicted by the test. The models are those of ``schema.grid_models`` over
``spec_axes(spec)``: seed, the spec's extra axes (hypothetical ones, such as an activation), inputs
and lr. A run directory can only declare today's axes in its config.json, so a spec with extra axes
gives rows (``metrics_rows``, ``curvature_rows``, ``spectrum``) but no directory.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from scalelab.schema import SEED, Axis, ModelId, grid_models

LAYERS = 2  # one hidden layer: Dense_0 (hidden), Dense_1 (output)
TOP_K = 2


@dataclass(frozen=True)
class Outcome:
    train_loss_1: float = 0.5  # training loss after epoch 1
    final_loss: float = 0.35  # train and test loss after the last epoch
    final_acc: float = 0.87
    abs_logit: float = 2.0  # at init
    clipped: float = 0.0  # clipped_wrong_frac at init and at the end
    predicted_class: float = 0.2
    dead: float = 0.1
    grad_norm_0: float = 1.0
    update_ratio_0: float = 0.01
    preact_std_0: float = 1.0
    top_eig: float = 10.0
    adam_sharpness: float = 1000.0


@dataclass
class RunSpec:
    outcomes: dict[str, Outcome]
    seeds: int = 2
    epochs: int = 3
    lrs: tuple[float, ...] = (1e-3,)
    steps_per_epoch: int = 10
    curvature: bool = True
    spectrum: bool = True
    skipped_models: set[int] = field(default_factory=set)  # these models' curvature rows after init are skipped
    extra_axes: tuple[Axis, ...] = ()  # setting axes before inputs (e.g. activation); rows only, no directory
    init_scales: tuple[float, ...] = (1.0,)  # an init_scale axis after lr when not (1,)
    optimizer: str = "adam"
    # Outcomes of particular cells: {(("inputs", "/1"), ("lr", 1e-4)): Outcome(...)} replaces the
    # transform's outcome wherever the model has all of these values.
    cells: dict[tuple[tuple[str, object], ...], Outcome] = field(default_factory=dict)
    # grid.programs (the arms of a study, static fields and their own grid.inputs/seeds); with
    # programs the models are schema.study_models' and the static axes multiply nothing.
    programs: tuple[dict, ...] = ()


MAX_STEP = RunSpec.epochs * RunSpec.steps_per_epoch  # the last measurement of a default spec


def run_config(spec: RunSpec):
    from scalelab.config import RunConfig

    return RunConfig.from_dict(config_json(spec), source="synthetic")


def spec_axes(spec: RunSpec) -> tuple[Axis, ...]:
    """The grid's axes in schema order: seed, the extra axes, inputs, lr (with programs: the run's)."""
    if spec.programs:
        from scalelab.schema import grid_axes

        return grid_axes(run_config(spec))
    return (
        Axis(SEED, tuple(range(spec.seeds)), int),
        *spec.extra_axes,
        Axis("inputs", tuple(spec.outcomes), str),
        Axis("lr", spec.lrs, float),
        *((Axis("init_scale", spec.init_scales, float),) if spec.init_scales != (1.0,) else ()),
    )


def seed_factor(seed: int) -> float:
    """Seed s multiplies every measured number by 1 + 0.1 s: seed 0 exact, seed 1 10% larger."""
    return 1.0 + 0.1 * seed


def setting_factor(spec: RunSpec, model: ModelId) -> float:
    """The j-th value of each setting axis but inputs multiplies every measured number by 1 + j:
    the first lr (or activation) exact, the second twice as large."""
    factor = 1.0
    for axis in spec_axes(spec):
        if spec.programs and axis.kind is not float:
            continue
        if axis.name not in (SEED, "inputs"):
            factor *= 1 + axis.values.index(model[axis.name])
    return factor


def outcome_of(spec: RunSpec, model: ModelId) -> Outcome:
    """The model's cell outcome (``spec.cells``) if one matches, else its transform's."""
    names = dict(model.coords)
    for coords, outcome in spec.cells.items():
        if all(name in names and names[name] == value for name, value in coords):
            return outcome
    return spec.outcomes[model["inputs"]]


def models(spec: RunSpec):
    """(model id, outcome, factor) in grid order; factor = seed factor x setting factor."""
    if spec.programs:
        from scalelab.schema import study_models

        every = study_models(run_config(spec))
    else:
        every = grid_models(spec_axes(spec))
    for model in every:
        factor = seed_factor(model[SEED]) * setting_factor(spec, model)
        yield model, outcome_of(spec, model), factor


def epoch_loss(o: Outcome, epoch: int, epochs: int) -> float:
    """Geometric from train_loss_1 at epoch 1 to final_loss at the last epoch."""
    t = 0.0 if epochs == 1 else (epoch - 1) / (epochs - 1)
    return o.train_loss_1 * (o.final_loss / o.train_loss_1) ** t


def metrics_rows(spec: RunSpec) -> list[dict]:
    rows = []
    for model, o, f in models(spec):
        for epoch in range(1, spec.epochs + 1):
            loss = epoch_loss(o, epoch, spec.epochs) * f
            acc = o.final_acc if epoch == spec.epochs else o.final_acc * 0.9
            rows.append(
                {
                    **model.columns,
                    "epoch": epoch,
                    "train_loss": loss,
                    "train_acc": acc,
                    "test_loss": loss,
                    "test_acc": acc,
                    "grad_norm": o.grad_norm_0 * f / epoch,
                    "stopped": 0,
                    "diverged": 0,
                }
            )
    return rows


def curvature_columns(spec: RunSpec) -> list[str]:
    cols = ["model", *(a.name for a in spec_axes(spec))]
    cols += [
        "epoch",
        "step",
        "skipped",
        "loss",
        "accuracy",
        "grad_norm",
        "mean_abs_logit",
        "max_logit_gap",
        "mean_max_prob",
        "clipped_wrong_frac",
        "clipped_frac",
        "predicted_class_frac",
    ]
    for i in range(LAYERS):
        cols += [f"grad_norm_{i}", f"weight_norm_{i}", f"update_ratio_{i}", f"layer_{i}_top_eig", f"layer_{i}_trace"]
    for j in range(LAYERS - 1):
        cols += [f"dead_frac_{j}", f"always_on_frac_{j}", f"saturated_frac_{j}", f"preact_mean_{j}", f"preact_std_{j}"]
    cols += [f"top_eig_{k}" for k in range(1, TOP_K + 1)] + [f"top_res_{k}" for k in range(1, TOP_K + 1)]
    return cols + [
        "bottom_eig_1",
        "bottom_res_1",
        "trace",
        "trace_stderr",
        "adam_sharpness",
        "adam_sharpness_res",
        "sgd_threshold",
        "adam_threshold",
    ]


def curvature_row(spec: RunSpec, model: ModelId, o: Outcome, f: float, step: int) -> dict:
    """One measurement; sharpness grows linearly with the step (from top_eig at step 0 to twice it)."""
    growth, lr = 1.0 + step / (spec.epochs * spec.steps_per_epoch), model["lr"]
    row = {c: 0.5 for c in curvature_columns(spec)}
    row.update(
        model.columns,
        epoch=step / spec.steps_per_epoch,
        step=step,
        skipped="",
        loss=o.final_loss * f,
        accuracy=o.final_acc,
        grad_norm=o.grad_norm_0 * f,
        mean_abs_logit=o.abs_logit * f,
        mean_max_prob=min(0.1 + o.clipped, 1.0),
        clipped_wrong_frac=o.clipped * f,
        predicted_class_frac=o.predicted_class,
        grad_norm_0=o.grad_norm_0 * f,
        update_ratio_0=o.update_ratio_0 * f,
        dead_frac_0=o.dead * f,
        preact_std_0=o.preact_std_0 * f,
        top_eig_1=o.top_eig * f * growth,
        top_eig_2=o.top_eig * f * growth / 2,
        adam_sharpness=math.nan if step == 0 else o.adam_sharpness * f * growth,
        sgd_threshold=2 / lr,
        adam_threshold=38 / lr,
    )
    if step > 0 and model.index in spec.skipped_models:
        row = {k: (math.nan if isinstance(v, float) else v) for k, v in row.items()}
        row.update(model.columns, epoch=step / spec.steps_per_epoch, skipped="diverged in epoch 1")
    return row


def curvature_rows(spec: RunSpec) -> list[dict]:
    steps = range(0, spec.epochs * spec.steps_per_epoch + 1, spec.steps_per_epoch // 2)
    return [curvature_row(spec, model, o, f, s) for s in steps for model, o, f in models(spec)]


def spectrum(spec: RunSpec) -> dict:
    """Two probes per model: a spike at 0 and outliers near top_eig."""
    out = []
    for model, o, _ in models(spec):
        nodes = [[0.0, o.top_eig / 2, o.top_eig], [-0.01, 0.01, o.top_eig * 0.9]]
        out.append({**model.columns, "nodes": nodes, "weights": [[0.8, 0.15, 0.05], [0.5, 0.45, 0.05]]})
    return {"step": 0, "models": out}


def config_json(spec: RunSpec) -> dict:
    """A version-1 config.json (read as it is) of the spec's grid; version 2 with programs."""
    grid = {"inputs": list(spec.outcomes), "seeds": spec.seeds, "lrs": list(spec.lrs),
            "init_scales": list(spec.init_scales)}  # fmt: skip
    return {
        "schema_version": 1,
        "data": {"name": "synthetic"},
        "model": {"hidden": [8], "activation": "relu", "init": "glorot-uniform"},
        "optimizer": {"name": spec.optimizer, "b1": 0.9, "b2": 0.999, "eps": 1e-07},
        "train": {"loss": "keras-ce", "epochs": spec.epochs, "batch_size": 32, "patience": 0},
        "grid": {**grid, "programs": list(spec.programs)} if spec.programs else grid,
        "curvature": {"every": spec.steps_per_epoch // 2, "top_k": TOP_K, "examples": 256},
    }


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def write_run(path: Path, spec: RunSpec) -> Path:
    """Writes config.json, metrics.csv, status.json and (if asked) curvature.csv and spectrum.json."""
    if spec.extra_axes and not spec.programs:
        raise ValueError("config.json cannot declare extra axes yet: use the rows (metrics_rows, ...) directly")
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_json(spec)))
    (path / "status.json").write_text(json.dumps({"state": "complete"}))
    columns = list(metrics_rows(spec)[0])
    write_csv(path / "metrics.csv", columns, metrics_rows(spec))
    if spec.curvature:
        write_csv(path / "curvature.csv", curvature_columns(spec), curvature_rows(spec))
    if spec.spectrum:
        (path / "spectrum.json").write_text(json.dumps(spectrum(spec)))
    return path
