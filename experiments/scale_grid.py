"""The main job: train a grid of MLPs (seeds x input transforms x learning rates) on
Fashion-MNIST as one compiled program, and write a run directory.

    python -m experiments.scale_grid                      # the default study (minutes on 2 cores)
    python -m experiments.scale_grid --quick              # a seconds-long smoke run
    python -m experiments.scale_grid --inputs /1,/255,/1000 --seeds 5 --epochs 5 --out runs/posts
    python -m experiments.scale_grid --config study.toml  # a config file (TOML or JSON); flags override it
    python -m experiments.scale_grid --resume runs/posts  # continue a killed or stopped run

Every flag but the last group is a field of ``scalelab.config.RunConfig`` (``--help`` lists
them by section); the run's ``config.json`` given to ``--config`` reproduces its study.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments import common
from scalelab import cli
from scalelab.config import RunConfig
from scalelab.errors import UsageError

PROG = "scale_grid"
# --quick: seconds, not minutes: a slice of the data, two epochs, the posts' three scales.
QUICK = {
    "grid": {"inputs": ("/1", "/255", "/1000"), "seeds": 2},
    "train": {"epochs": 2},
    "data": {"train_limit": 2048, "test_limit": 1000},
}


def build_parser() -> cli.Parser:
    p = common.build_parser(
        PROG, __doc__, QUICK, out_help="run directory to create (default runs/scale_grid-TIMESTAMP)"
    )
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR",
        help="continue RUN_DIR from its last finished epoch; flags left out keep the run's values",
    )  # fmt: skip
    return p


# ``base`` (the defaults, or the resumed run's config), then --config FILE, --quick, the flags.
config_from_args = common.resolve


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.resume is not None and args.out is not None and args.out != args.resume:
        raise UsageError("--resume RUN_DIR continues RUN_DIR in place; drop --out, or drop --resume to start anew")
    if args.resume is not None:
        from scalelab.results import RunDir

        base = RunDir.open(args.resume).config()
        config = config_from_args(args, base, QUICK)
    else:
        config = config_from_args(args, RunConfig(), QUICK)
    from scalelab import study

    result = study.run(config, args.resume or args.out, resume=args.resume is not None,
                       progress=not args.no_progress, name=PROG)  # fmt: skip
    print(format_table(result.summary()))
    print(f"\nrun directory: {result.path}" + (" (report.html inside)" if config.output.report else ""))
    return 0


def format_table(summary: dict) -> str:
    """A compact per-setting table of final values: mean [min, max] over seeds."""
    axes = summary["axes"]
    header = " ".join(f"{a:>14}" for a in axes) + f" {'train loss':>22} {'test loss':>22} {'test acc':>22} div stop"
    lines = [header, "-" * len(header)]

    def cell(stat):
        return "n/a" if stat is None else f"{stat['mean']:.3f} [{stat['min']:.3f},{stat['max']:.3f}]"

    def value(v):
        return f"{v:>14.2g}" if isinstance(v, float) else f"{v!s:>14}"

    for g in summary["groups"]:
        lines.append(
            " ".join(value(g[a]) for a in axes) + f" {cell(g['train_loss']):>22} {cell(g['test_loss']):>22} "
            f"{cell(g['test_acc']):>22} {g['diverged']:>3} {g['stopped']:>4}"
        )
    return "\n".join(lines)


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
