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

Each setting is one ``experiments.scale_grid`` run (the inputs ``/1,/255`` and the seeds are its
grid axes) into ``OUT/<setting>``; ``OUT/summary.json`` and the printed table compare the final
test accuracy (mean [min, max] over seeds) and the epochs trained per setting and inputs. The
sub-runs are started with ``--no-report``; scale_grid's report (figures, report.md/html) is then
written for each of them once both have finished and ``OUT/summary.json`` is on disk, unless
``--no-report`` is given here too.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import scale_grid
from scalelab import cli
from scalelab.errors import ScalelabError, UsageError
from scalelab.results import read_json, write_json

PROG = "keras_faq"
INPUTS = "/1,/255"
COMMON = ["--hidden", "128,128", "--batch-size", "32", "--inputs", INPUTS]


@dataclass(frozen=True)
class Setting:
    flags: tuple[str, ...]  # scale_grid flags besides COMMON and the epochs
    epochs: int
    quick_epochs: int
    reported: str  # what the question reports for it


SETTINGS = {
    "relu-adam-keras-ce": Setting(
        ("--activation", "relu", "--optimizer", "adam", "--loss", "keras-ce", "--patience", "3"),
        epochs=20, quick_epochs=4, reported="~20% validation accuracy (raw pixels)",
    ),
    "sigmoid-sgd-mse": Setting(
        ("--activation", "sigmoid", "--optimizer", "sgd", "--loss", "mse"),
        epochs=50, quick_epochs=6, reported="~85% after 50 epochs (raw pixels)",
    ),
}  # fmt: skip
DEFAULTS = {"seeds": 3, "train_limit": None, "test_limit": None}
QUICK = {"seeds": 2, "train_limit": 2048, "test_limit": 1000}
PASSED_SWITCHES = ("no_curvature", "no_save_params", "no_progress")


# --- shared by the experiments that run several scale_grid sub-runs ------------------------------


def add_subrun_flags(p: argparse.ArgumentParser, defaults: dict[str, Any], quick: dict[str, Any]) -> None:
    """The flags every multi-run experiment passes on to its ``scale_grid`` sub-runs."""
    p.add_argument("--seeds", type=cli.positive_int, help=f"number of seeds, 0..N-1 (default {defaults['seeds']})")
    p.add_argument("--train-limit", type=cli.positive_int, help="use the first N training examples (default all)")
    p.add_argument("--test-limit", type=cli.positive_int, help="use the first N test examples (default all)")
    cli.add_data_flags(p)
    p.add_argument("--out", type=Path, help="folder for the sub-runs and summary.json (default runs/NAME-TIMESTAMP)")
    p.add_argument("--quick", action="store_true", help="seconds-long run: "
                   + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in quick.items()) + ", fewer epochs")  # fmt: skip
    p.add_argument("--max-models-per-chunk", type=cli.positive_int, help="passed on to scale_grid")
    p.add_argument("--no-curvature", action="store_true", help="passed on to scale_grid: no curvature.csv")
    p.add_argument("--no-save-params", action="store_true", help="passed on to scale_grid: no params/")
    p.add_argument("--no-report", action="store_true", help="no report.md/html and figures per sub-run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def subrun_argv(args, defaults: dict[str, Any], quick: dict[str, Any]) -> list[str]:
    """scale_grid flags from the shared flags: explicit values, else --quick's, else the defaults."""
    argv = []
    for key in ("seeds", "train_limit", "test_limit"):
        value = getattr(args, key)
        value = value if value is not None else quick[key] if args.quick else defaults[key]
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    for key in ("data", "data_dir", "max_models_per_chunk"):
        if getattr(args, key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    switches = [f"--{key.replace('_', '-')}" for key in PASSED_SWITCHES if getattr(args, key)]
    # The reports are written by finish_study once every sub-run has finished.
    return [*argv, *switches, "--no-report"]


def output_folder(args, prog: str, subdirs) -> Path:
    """``--out`` (or a timestamped default), refused if it already holds any of this experiment's runs."""
    out = args.out or Path("runs") / f"{prog}-{time.strftime('%Y%m%d-%H%M%S')}"
    taken = [name for name in ("summary.json", *(f"{s}/config.json" for s in subdirs)) if (out / name).exists()]
    if taken:
        raise UsageError(f"{out} already holds {taken[0]}; choose another --out")
    return out


def run_subgrid(out: Path, argv: list[str]) -> dict[str, Any]:
    """One ``scale_grid`` run into ``out``; returns its summary.json."""
    code = scale_grid.run([*argv, "--out", str(out)])
    if code != 0:
        raise ScalelabError(f"the scale_grid run into {out} ended with status {code}; see its messages above")
    return read_json(out / "summary.json")


def finish_study(args, out: Path, summary: dict[str, Any], table: str, subruns) -> None:
    """Writes ``out/summary.json``, prints the table and the output folder, then scale_grid's report
    (figures, report.md/html) for each finished sub-run ``out/NAME``, unless --no-report."""
    write_json(out / "summary.json", summary)
    print(table)
    print(f"\noutput: {out} (summary.json; sub-runs {', '.join(subruns)})")
    if not args.no_report:
        for name in subruns:
            scale_grid.write_report(out / name)


def stat(values) -> dict[str, float] | None:
    """mean/min/max of the finite values, or None when there are none."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def cell(s: dict[str, float] | None, fmt: str = ".3f") -> str:
    return "n/a" if s is None else f"{s['mean']:{fmt}} [{s['min']:{fmt}},{s['max']:{fmt}}]"


# --- this experiment -----------------------------------------------------------------------------


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=__doc__.split("\n\n")[0])
    add_subrun_flags(p, DEFAULTS, QUICK)
    return p


def compare(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, inputs): final test accuracy/loss and epochs trained over seeds."""
    rows = []
    for setting, summary in summaries.items():
        for group in summary["by_inputs"]:
            models = [m for m in summary["models"] if m["inputs"] == group["inputs"]]
            rows.append({
                "setting": setting, "inputs": group["inputs"], "models": group["models"],
                "test_acc": group["test_acc"], "test_loss": group["test_loss"], "train_loss": group["train_loss"],
                "epochs_trained": stat([m["epoch"] for m in models]), "stopped": group["stopped"],
                "diverged": group["diverged"], "question_reported": SETTINGS[setting].reported,
            })  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'setting':>20} {'inputs':>6} {'test acc':>22} {'test loss':>24} {'epochs':>18} {'stop':>4} {'div':>4}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['setting']:>20} {r['inputs']:>6} {cell(r['test_acc']):>22} {cell(r['test_loss']):>24} "
            f"{cell(r['epochs_trained'], '.1f'):>18} {r['stopped']:>4} {r['diverged']:>4}"
        )
    lines.append("the question reports: " + "; ".join(f"{name}: {s.reported}" for name, s in SETTINGS.items()))
    return "\n".join(lines)


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    out = output_folder(args, PROG, SETTINGS)
    shared = subrun_argv(args, DEFAULTS, QUICK)
    summaries = {}
    for name, setting in SETTINGS.items():
        epochs = ["--epochs", str(setting.quick_epochs if args.quick else setting.epochs)]
        summaries[name] = run_subgrid(out / name, [*COMMON, *setting.flags, *epochs, *shared])
    rows = compare(summaries)
    summary = {"experiment": PROG, "settings": {k: asdict(v) for k, v in SETTINGS.items()}, "common": COMMON,
               "shared": shared, "by_setting_and_inputs": rows}  # fmt: skip
    finish_study(args, out, summary, format_table(rows), SETTINGS)
    return 0


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
