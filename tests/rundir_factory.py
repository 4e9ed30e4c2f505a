"""Small synthetic run directories in the format of notes/run-directory-schema.md, for the analysis tests.

Each input transform gets an ``Outcome``: what its models measure. Seeds differ by a small known
factor, so medians, ranges and every number the report prints can be predicted by the test.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

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
    lr: float = 1e-3
    steps_per_epoch: int = 10
    curvature: bool = True
    spectrum: bool = True
    skipped_models: set[int] = field(default_factory=set)  # these models' curvature rows after init are skipped


MAX_STEP = RunSpec.epochs * RunSpec.steps_per_epoch  # the last measurement of a default spec


def seed_factor(seed: int) -> float:
    """Seed s multiplies every measured number by 1 + 0.1 s: seed 0 exact, seed 1 10% larger."""
    return 1.0 + 0.1 * seed


def models(spec: RunSpec):
    """(model, seed, inputs, outcome) in grid order."""
    m = 0
    for inputs, outcome in spec.outcomes.items():
        for seed in range(spec.seeds):
            yield m, seed, inputs, outcome
            m += 1


def epoch_loss(o: Outcome, epoch: int, epochs: int) -> float:
    """Geometric from train_loss_1 at epoch 1 to final_loss at the last epoch."""
    t = 0.0 if epochs == 1 else (epoch - 1) / (epochs - 1)
    return o.train_loss_1 * (o.final_loss / o.train_loss_1) ** t


def metrics_rows(spec: RunSpec) -> list[dict]:
    rows = []
    for m, seed, inputs, o in models(spec):
        f = seed_factor(seed)
        for epoch in range(1, spec.epochs + 1):
            loss = epoch_loss(o, epoch, spec.epochs) * f
            acc = o.final_acc if epoch == spec.epochs else o.final_acc * 0.9
            rows.append(
                {
                    "model": m,
                    "seed": seed,
                    "inputs": inputs,
                    "lr": spec.lr,
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


def curvature_columns() -> list[str]:
    cols = [
        "model",
        "seed",
        "inputs",
        "lr",
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


def curvature_row(spec: RunSpec, m: int, seed: int, inputs: str, o: Outcome, step: int) -> dict:
    """One measurement; sharpness grows linearly with the step (from top_eig at step 0 to twice it)."""
    f, growth = seed_factor(seed), 1.0 + step / (spec.epochs * spec.steps_per_epoch)
    row = {c: 0.5 for c in curvature_columns()}
    row.update(
        model=m,
        seed=seed,
        inputs=inputs,
        lr=spec.lr,
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
        sgd_threshold=2 / spec.lr,
        adam_threshold=38 / spec.lr,
    )
    if step > 0 and m in spec.skipped_models:
        row = {k: (math.nan if isinstance(v, float) else v) for k, v in row.items()}
        row.update(epoch=step / spec.steps_per_epoch, lr=spec.lr, skipped="diverged in epoch 1")
    return row


def curvature_rows(spec: RunSpec) -> list[dict]:
    steps = range(0, spec.epochs * spec.steps_per_epoch + 1, spec.steps_per_epoch // 2)
    return [curvature_row(spec, m, seed, inputs, o, s) for s in steps for m, seed, inputs, o in models(spec)]


def spectrum(spec: RunSpec) -> dict:
    """Two probes per model: a spike at 0 and outliers near top_eig."""
    out = []
    for m, seed, inputs, o in models(spec):
        nodes = [[0.0, o.top_eig / 2, o.top_eig], [-0.01, 0.01, o.top_eig * 0.9]]
        out.append(
            {
                "model": m,
                "seed": seed,
                "inputs": inputs,
                "lr": spec.lr,
                "nodes": nodes,
                "weights": [[0.8, 0.15, 0.05], [0.5, 0.45, 0.05]],
            }
        )
    return {"step": 0, "models": out}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def write_run(path: Path, spec: RunSpec) -> Path:
    """Writes config.json, metrics.csv, status.json and (if asked) curvature.csv and spectrum.json."""
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "schema_version": 1,
        "data": {"name": "synthetic"},
        "model": {"hidden": [8], "activation": "relu", "init": "glorot-uniform"},
        "optimizer": {"name": "adam", "b1": 0.9, "b2": 0.999, "eps": 1e-07},
        "train": {"loss": "keras-ce", "epochs": spec.epochs, "batch_size": 32, "patience": 0},
        "grid": {"inputs": list(spec.outcomes), "seeds": spec.seeds, "lrs": [spec.lr]},
        "curvature": {"every": spec.steps_per_epoch // 2},
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "status.json").write_text(json.dumps({"state": "complete"}))
    columns = list(metrics_rows(spec)[0])
    write_csv(path / "metrics.csv", columns, metrics_rows(spec))
    if spec.curvature:
        write_csv(path / "curvature.csv", curvature_columns(), curvature_rows(spec))
    if spec.spectrum:
        (path / "spectrum.json").write_text(json.dumps(spectrum(spec)))
    return path
