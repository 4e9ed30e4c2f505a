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

Each setting is a named ``RunConfig`` (``SETTINGS``), trained by ``scalelab.study.run`` (the
inputs ``/1,/255`` and the seeds are its grid axes) into ``OUT/<setting>``; ``OUT/summary.json``
and the printed table compare the final test accuracy (mean [min, max] over seeds) and the
epochs trained per setting and inputs. Every config flag (``--seeds``, ``--train-limit``, ...)
applies to both settings. The report (figures, report.md/html) of each sub-run is written once
both have finished and ``OUT/summary.json`` is on disk, unless ``--no-report``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from experiments import common
from scalelab import cli, flags, study
from scalelab.config import GridConfig, ModelConfig, RunConfig, TrainConfig
from scalelab.optim import OptimizerConfig

PROG = "keras_faq"


@dataclass(frozen=True)
class Setting:
    config: RunConfig
    quick_epochs: int
    reported: str  # what the question reports for it


def _question(activation: str, optimizer: str, loss: str, epochs: int, patience: int = 0) -> RunConfig:
    """The question's network (784-128-128-10, batch 32, inputs /1 and /255) with one training recipe."""
    return RunConfig(
        model=ModelConfig(hidden=(128, 128), activation=activation),
        optimizer=OptimizerConfig(name=optimizer),
        train=TrainConfig(loss=loss, epochs=epochs, batch_size=32, patience=patience),
        grid=GridConfig(inputs=("/1", "/255"), seeds=3),
    )


SETTINGS = {
    "relu-adam-keras-ce": Setting(
        _question("relu", "adam", "keras-ce", epochs=20, patience=3), quick_epochs=4,
        reported="~20% validation accuracy (raw pixels)",
    ),
    "sigmoid-sgd-mse": Setting(
        _question("sigmoid", "sgd", "mse", epochs=50), quick_epochs=6, reported="~85% after 50 epochs (raw pixels)",
    ),
}  # fmt: skip
QUICK: flags.Overrides = {"grid": {"seeds": 2}, "data": {"train_limit": 2048, "test_limit": 1000}}


def setting_configs(args) -> dict[str, RunConfig]:
    """Each setting's config with the command line applied; its own --quick epochs under --quick."""
    configs = {}
    for name, setting in SETTINGS.items():
        quick = flags.merge(QUICK, {"train": {"epochs": setting.quick_epochs}})
        configs[name] = common.resolve(args, setting.config, quick)
    return configs


def compare(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, inputs): final test accuracy/loss and epochs trained over seeds."""
    rows = []
    for setting, summary in summaries.items():
        for group in summary["groups"]:
            models = [m for m in summary["models"] if m["inputs"] == group["inputs"]]
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
    args = common.build_parser(PROG, __doc__, QUICK, out_help="folder for the sub-runs and summary.json "
                               "(default runs/keras_faq-TIMESTAMP)").parse_args(argv)  # fmt: skip
    configs = setting_configs(args)
    out = common.output_folder(args, PROG, SETTINGS)
    summaries = {}
    for name, config in configs.items():
        quiet = dataclasses.replace(config, output=dataclasses.replace(config.output, report=False))
        summaries[name] = study.run(quiet, out / name, progress=not args.no_progress, name=f"{PROG}/{name}").summary()
    rows = compare(summaries)
    summary = {"experiment": PROG, "configs": {k: c.to_dict() for k, c in configs.items()},
               "reported": {k: s.reported for k, s in SETTINGS.items()}, "by_setting_and_inputs": rows}  # fmt: skip
    reports = all(c.output.report for c in configs.values())
    common.finish_study(out, summary, format_table(rows), SETTINGS, reports)
    return 0


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
