"""The accepted answer's claim, measured: do centred inputs train better than [0, 1] inputs?

    python -m experiments.preprocess_compare --quick          # seconds
    python -m experiments.preprocess_compare --seeds 5 --out runs/preprocess

The answer (quoting the Neural Network FAQ) says that "scaling the inputs to [-1,1] will work better
than [0,1]", that any scaling which centres the inputs (mean, median) is "likely to be as good",
and that robust estimators of location and scale (Iglewicz 1983) are better still with outliers.
Here: ``/255`` ([0, 1]) against ``[-1,1]``, ``zscore``, ``pixel-zscore`` and ``robust``, with the
same seeds (so the same initial weights and minibatch order per seed), once for Adam and once for
SGD: two ``experiments.scale_grid`` runs, into ``OUT/adam`` and ``OUT/sgd``. The model and training
are scale_grid's defaults (MLP 784-128-10 relu, Keras' clipped cross-entropy, batch 32) unless
flags say otherwise.

``OUT/summary.json`` and the printed table give, per optimiser and transform, the final test loss
and accuracy (mean [min, max] over seeds) and the per-seed difference to ``/255`` (transform minus
``/255``, paired by seed, so a positive accuracy difference means the transform did better).
"""

from __future__ import annotations

import sys
from typing import Any

from experiments.keras_faq import (
    add_subrun_flags,
    cell,
    finish_study,
    output_folder,
    run_subgrid,
    stat,
    subrun_argv,
)
from scalelab import cli

PROG = "preprocess_compare"
BASELINE = "/255"
TRANSFORMS = (BASELINE, "[-1,1]", "zscore", "pixel-zscore", "robust")
OPTIMIZERS = ("adam", "sgd")
DEFAULTS = {"seeds": 3, "train_limit": None, "test_limit": None, "epochs": 5}
QUICK = {"seeds": 2, "train_limit": 2048, "test_limit": 1000, "epochs": 2}


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=__doc__.split("\n\n")[0])
    add_subrun_flags(p, DEFAULTS, QUICK)
    p.add_argument("--epochs", type=cli.positive_int, help=f"epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--hidden", type=cli.int_list, help="hidden widths (default: scale_grid's, 128)")
    p.add_argument("--activation", help="activation (default: scale_grid's, relu)")
    p.add_argument("--loss", help="loss (default: scale_grid's, keras-ce)")
    return p


def model_argv(args) -> list[str]:
    """The model and schedule flags, given or defaulted, for both sub-runs."""
    epochs = args.epochs or (QUICK["epochs"] if args.quick else DEFAULTS["epochs"])
    argv = ["--inputs", ",".join(TRANSFORMS), "--epochs", str(epochs)]
    if args.hidden is not None:
        argv += ["--hidden", ",".join(map(str, args.hidden))]
    for key in ("activation", "loss"):
        if getattr(args, key) is not None:
            argv += [f"--{key}", getattr(args, key)]
    return argv


def paired_differences(models: list[dict[str, Any]], transform: str, field: str) -> list[float]:
    """Per seed, ``field`` of ``transform`` minus that of ``/255`` (models that diverged excluded)."""
    by_seed = {(m["seed"], m["inputs"]): m for m in models if not m["diverged"]}
    return [
        by_seed[(seed, transform)][field] - by_seed[(seed, BASELINE)][field]
        for seed in sorted({seed for seed, _ in by_seed})
        if (seed, transform) in by_seed and (seed, BASELINE) in by_seed
    ]


def compare(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (optimizer, transform): final test loss/accuracy and the paired gap to /255."""
    rows = []
    for optimizer, summary in summaries.items():
        groups = {g["inputs"]: g for g in summary["by_inputs"]}
        for transform in TRANSFORMS:
            acc_gap = paired_differences(summary["models"], transform, "test_acc")
            loss_gap = paired_differences(summary["models"], transform, "test_loss")
            rows.append({
                "optimizer": optimizer, "inputs": transform, "models": groups[transform]["models"],
                "diverged": groups[transform]["diverged"], "test_loss": groups[transform]["test_loss"],
                "test_acc": groups[transform]["test_acc"], "test_acc_minus_baseline": stat(acc_gap),
                "test_loss_minus_baseline": stat(loss_gap), "paired_seeds": len(acc_gap),
            })  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'optimizer':>9} {'inputs':>12} {'test loss':>22} {'test acc':>22} "
              f"{'acc - /255':>26} {'loss - /255':>26} {'div':>4}")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['optimizer']:>9} {r['inputs']:>12} {cell(r['test_loss']):>22} {cell(r['test_acc']):>22} "
            f"{cell(r['test_acc_minus_baseline'], '+.3f'):>26} {cell(r['test_loss_minus_baseline'], '+.3f'):>26} "
            f"{r['diverged']:>4}"
        )
    lines.append(f"differences are per seed (same init and minibatch order), transform minus {BASELINE}")
    return "\n".join(lines)


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    out = output_folder(args, PROG, OPTIMIZERS)
    shared = [*model_argv(args), *subrun_argv(args, DEFAULTS, QUICK)]
    summaries = {}
    for optimizer in OPTIMIZERS:
        summaries[optimizer] = run_subgrid(out / optimizer, ["--optimizer", optimizer, *shared])
    rows = compare(summaries)
    summary = {"experiment": PROG, "baseline": BASELINE, "transforms": list(TRANSFORMS),
               "optimizers": list(OPTIMIZERS), "shared": shared, "rows": rows}  # fmt: skip
    finish_study(args, out, summary, format_table(rows), OPTIMIZERS)
    return 0


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
