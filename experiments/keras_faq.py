"""The first question's two networks, reproduced: relu + Adam + cross-entropy against sigmoid + SGD +
mean squared error, on raw pixels (``/1``, as the question trained them) and on ``/255``.

    python -m experiments.keras_faq --quick              # seconds
    python -m experiments.keras_faq --seeds 3 --out runs/keras-faq

The question (Fashion-MNIST, Keras, MLP 784-128-128-10, batch 32, the test set as validation data):

* ``relu-adam-keras-ce``: relu, Adam (Keras defaults, lr 1e-3), Keras' clipped
  ``categorical_crossentropy``, ``EarlyStopping(patience=3)`` on the validation loss, up to 20
  epochs. Reported: about 20% validation accuracy.
* ``sigmoid-sgd-mse``: sigmoid, SGD (lr 1e-2), ``mean_squared_error``, 50 epochs. Reported: about
  85% "after 50 epochs".

The two recipes are two *bundles* of static fields (``SETTINGS``): one study (``CONFIG``) whose
``grid.programs`` lists them, with the inputs ``/1,/255`` and the seeds as its numeric axes, trained
by ``scalelab.study.run`` into one run directory ``OUT``: one metrics.csv, curvature.csv and report
over both. ``OUT/comparison.json`` and the printed table compare the final test accuracy (mean [min,
max] over seeds) and the epochs trained per setting and inputs. Every config flag but the bundles'
own fields (``--seeds``, ``--train-limit``, ...) applies to both.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from experiments import common
from scalelab import cli, flags, study
from scalelab.config import GridConfig, ModelConfig, RunConfig, TrainConfig

PROG = "keras_faq"


@dataclass(frozen=True)
class Setting:
    program: dict[str, Any]  # the bundle: static fields (grid.programs' layout)
    quick_epochs: int
    reported: str  # what the question reports for it


SETTINGS = {
    "relu-adam-keras-ce": Setting(
        {"model.activation": "relu", "optimizer.name": "adam", "train.loss": "keras-ce", "train.epochs": 20,
         "train.patience": 3},
        quick_epochs=4, reported="~20% validation accuracy (raw pixels)",
    ),
    "sigmoid-sgd-mse": Setting(
        {"model.activation": "sigmoid", "optimizer.name": "sgd", "train.loss": "mse", "train.epochs": 50,
         "train.patience": 0},
        quick_epochs=6, reported="~85% after 50 epochs (raw pixels)",
    ),
}  # fmt: skip


def programs(quick: bool) -> tuple[dict[str, Any], ...]:
    return tuple({**s.program, "train.epochs": s.quick_epochs} if quick else s.program for s in SETTINGS.values())


# The question's network (784-128-128-10, batch 32) on raw pixels and /255, with both recipes.
CONFIG = RunConfig(
    model=ModelConfig(hidden=(128, 128)),
    train=TrainConfig(batch_size=32),
    grid=GridConfig(inputs=("/1", "/255"), seeds=3, programs=programs(quick=False)),
)
QUICK: flags.Overrides = {
    "grid": {"seeds": 2, "programs": programs(quick=True)},
    "data": {"train_limit": 2048, "test_limit": 1000},
}


def setting_of(row: dict[str, Any]) -> str:
    """The name in SETTINGS of a table row's bundle (by its activation, optimiser and loss)."""
    return f"{row['activation']}-{row['optimizer']}-{row['loss_name']}"


def compare(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (setting, inputs): final test accuracy/loss and epochs trained over seeds."""
    rows = []
    for group in summary["groups"]:
        setting = setting_of(group)
        models = [m for m in summary["models"] if setting_of(m) == setting and m["inputs"] == group["inputs"]]
        rows.append({
            "setting": setting, "inputs": group["inputs"], "models": group["models"],
            "test_acc": group["test_acc"], "test_loss": group["test_loss"], "train_loss": group["train_loss"],
            "epochs_trained": common.stat([m["epoch"] for m in models]), "stopped": group["stopped"],
            "diverged": group["diverged"], "question_reported": SETTINGS[setting].reported,
        })  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'setting':>20} {'inputs':>6} {'test acc':>22} {'test loss':>24} {'epochs':>18} {'stop':>4} {'div':>4}"
    lines = [header, "-" * len(header)]
    cell = common.cell
    for r in rows:
        lines.append(
            f"{r['setting']:>20} {r['inputs']:>6} {cell(r['test_acc']):>22} {cell(r['test_loss']):>24} "
            f"{cell(r['epochs_trained'], '.1f'):>18} {r['stopped']:>4} {r['diverged']:>4}"
        )
    lines.append("the question reports: " + "; ".join(f"{name}: {s.reported}" for name, s in SETTINGS.items()))
    return "\n".join(lines)


def run(argv) -> int:
    args = common.build_parser(PROG, __doc__, QUICK, out_help="the study's run directory "
                               "(default runs/keras_faq-TIMESTAMP)").parse_args(argv)  # fmt: skip
    config = common.resolve(args, CONFIG, QUICK)
    result = study.run(config, common.output_folder(args, PROG), progress=not args.no_progress, name=PROG)
    rows = compare(result.summary())
    reported = {k: s.reported for k, s in SETTINGS.items()}
    common.finish(PROG, result, {"reported": reported, "by_setting_and_inputs": rows}, format_table(rows))
    return 0


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
