"""The accepted answer's claim, measured: do centred inputs train better than [0, 1] inputs?

    python -m experiments.preprocess_compare --quick          # seconds
    python -m experiments.preprocess_compare --seeds 5 --out runs/preprocess

The answer (quoting the Neural Network FAQ) says that "scaling the inputs to [-1,1] will work better
than [0,1]", that any scaling which centres the inputs (mean, median) is "likely to be as good",
and that robust estimators of location and scale (Iglewicz 1983) are better still with outliers.
Here: ``/255`` ([0, 1]) against ``[-1,1]``, ``zscore``, ``pixel-zscore`` and ``robust``, with the
same seeds (so the same initial weights and minibatch order per seed), for Adam and for SGD: one
study (``CONFIG``) whose optimiser is a static axis, trained by ``scalelab.study.run`` into one run
directory ``OUT`` with one report. The model and training are the defaults (MLP 784-128-10 relu,
Keras' clipped cross-entropy, batch 32, each optimiser's default lr) unless config flags say
otherwise.

``OUT/comparison.json`` and the printed table give, per optimiser and transform, the final test loss
and accuracy (mean [min, max] over seeds) and the per-seed difference to ``/255`` (transform minus
``/255``, paired by seed, so a positive accuracy difference means the transform did better).
"""

from __future__ import annotations

import sys
from typing import Any

from experiments import common
from scalelab import cli, flags, study
from scalelab.config import GridConfig, RunConfig, TrainConfig
from scalelab.errors import UsageError

PROG = "preprocess_compare"
BASELINE = "/255"
TRANSFORMS = (BASELINE, "[-1,1]", "zscore", "pixel-zscore", "robust")
OPTIMIZERS = ("adam", "sgd")
CONFIG = RunConfig(
    train=TrainConfig(epochs=5),
    grid=GridConfig(inputs=TRANSFORMS, seeds=3, programs=tuple({"optimizer.name": name} for name in OPTIMIZERS)),
)
QUICK: flags.Overrides = {
    "grid": {"seeds": 2},
    "data": {"train_limit": 2048, "test_limit": 1000},
    "train": {"epochs": 2},
}


def study_config(args) -> RunConfig:
    """``CONFIG`` with the command line applied; the transforms and optimisers are the experiment's."""
    given = flags.given(args)
    fixed = [flag for section, name, flag in (("grid", "inputs", "--inputs"), ("optimizer", "name", "--optimizer"))
             if name in given.get(section, {}) or (name == "name" and "programs" in given.get("grid", {}))]  # fmt: skip
    if fixed:
        raise UsageError(f"{PROG} compares {', '.join(TRANSFORMS)} under adam and sgd; drop {', '.join(fixed)}")
    return common.resolve(args, CONFIG, QUICK)


def paired_differences(models: list[dict[str, Any]], transform: str, field: str) -> list[float]:
    """Per seed, ``field`` of ``transform`` minus that of ``/255`` (models that diverged excluded)."""
    by_seed = {(m["seed"], m["inputs"]): m for m in models if not m["diverged"]}
    return [
        by_seed[(seed, transform)][field] - by_seed[(seed, BASELINE)][field]
        for seed in sorted({seed for seed, _ in by_seed})
        if (seed, transform) in by_seed and (seed, BASELINE) in by_seed
    ]


def compare(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (optimizer, transform): final test loss/accuracy and the paired gap to /255."""
    rows = []
    for optimizer in OPTIMIZERS:
        groups = {g["inputs"]: g for g in summary["groups"] if g["optimizer"] == optimizer}
        models = [m for m in summary["models"] if m["optimizer"] == optimizer]
        for transform in TRANSFORMS:
            acc_gap = paired_differences(models, transform, "test_acc")
            loss_gap = paired_differences(models, transform, "test_loss")
            rows.append({
                "optimizer": optimizer, "inputs": transform, "models": groups[transform]["models"],
                "diverged": groups[transform]["diverged"], "test_loss": groups[transform]["test_loss"],
                "test_acc": groups[transform]["test_acc"], "test_acc_minus_baseline": common.stat(acc_gap),
                "test_loss_minus_baseline": common.stat(loss_gap), "paired_seeds": len(acc_gap),
            })  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'optimizer':>9} {'inputs':>12} {'test loss':>22} {'test acc':>22} "
              f"{'acc - /255':>26} {'loss - /255':>26} {'div':>4}")  # fmt: skip
    lines = [header, "-" * len(header)]
    cell = common.cell
    for r in rows:
        lines.append(
            f"{r['optimizer']:>9} {r['inputs']:>12} {cell(r['test_loss']):>22} {cell(r['test_acc']):>22} "
            f"{cell(r['test_acc_minus_baseline'], '+.3f'):>26} {cell(r['test_loss_minus_baseline'], '+.3f'):>26} "
            f"{r['diverged']:>4}"
        )
    lines.append(f"differences are per seed (same init and minibatch order), transform minus {BASELINE}")
    return "\n".join(lines)


def run(argv) -> int:
    args = common.build_parser(PROG, __doc__, QUICK, out_help="the study's run directory "
                               "(default runs/preprocess_compare-TIMESTAMP)").parse_args(argv)  # fmt: skip
    config = study_config(args)
    result = study.run(config, common.output_folder(args, PROG), progress=not args.no_progress, name=PROG)
    rows = compare(result.summary())
    comparison = {"baseline": BASELINE, "transforms": list(TRANSFORMS), "optimizers": list(OPTIMIZERS), "rows": rows}
    common.finish(PROG, result, comparison, format_table(rows))
    return 0


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
