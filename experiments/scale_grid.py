"""The main job: train a grid of MLPs (seeds x input transforms x learning rates) on
Fashion-MNIST as one compiled program, and write a run directory.

    python -m experiments.scale_grid                      # the posts study (under 5 minutes on 2 cores)
    python -m experiments.scale_grid --quick              # the same study in seconds, on a data slice
    python -m experiments.scale_grid --inputs /1,/255,/1000 --seeds 5 --epochs 5 --out runs/posts
    python -m experiments.scale_grid --config study.toml  # a config file (TOML or JSON); flags override it
    python -m experiments.scale_grid --resume runs/posts  # continue a killed or stopped run

Every flag but the last group is a field of ``scalelab.config.RunConfig`` (``--help`` lists
them by section); the run's ``config.json`` given to ``--config`` reproduces its study.

Without ``--config``/``--resume`` and without a flag that describes another network or grid (any
flag of the model, optimiser, train or grid sections but ``--epochs``, ``--seeds`` and
``--seed-list``), the run is ``POSTS``: the study that answers both posts' questions, one program
per arm (``analysis.report`` names which arm answers which question):

* the posts' network (784-128-10 relu, Adam, Keras' clipped cross-entropy) on every transform the
  questions name: ``/1`` (raw pixels), ``/255``, ``/1000``, and the centred ``zscore`` and ``[-1,1]``;
* at ``/1`` and ``/255`` only, one change each: the exact cross-entropy ``ce`` (is it the clip?),
  sigmoid (is it the ReLU?), SGD (is it Adam?), the first post's sigmoid + SGD + MSE bundle, and
  the widths 32 and 512 (do wider layers stop learning?), 512 with fewer seeds (it costs 4x);
* 8 seeds (a seed is the same initial weights and minibatch order in every arm of the same
  shapes, so arms and transforms are compared paired by seed), 2 epochs, curvature at init and
  after each epoch.

``--quick`` is that study on 2048 training and 1000 test examples, 2 seeds, 1 epoch and without
curvature (half a minute); with flags that describe another study it is ``QUICK``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments import common
from scalelab import cli, flags
from scalelab.config import RunConfig
from scalelab.errors import UsageError

PROG = "scale_grid"
# --quick: seconds, not minutes: a slice of the data, two epochs, the posts' three scales.
QUICK = {
    "grid": {"inputs": ("/1", "/255", "/1000"), "seeds": 2},
    "train": {"epochs": 2},
    "data": {"train_limit": 2048, "test_limit": 1000},
}


POSTS_NETWORK = {"model.hidden": (128,), "model.activation": "relu", "train.loss": "keras-ce",
                 "optimizer.name": "adam"}  # fmt: skip
EDGES = ("/1", "/255")  # where the counterfactual arms run: the failing and the recommended scale
WIDE_SEEDS = 3


def posts_programs(wide_seeds: int) -> tuple[dict, ...]:
    """The arms of the posts study (grid.programs): the posts' network on every transform, then one
    change each at /1 and /255."""
    arms = [{"train.loss": "ce"}, {"model.activation": "sigmoid"}, {"optimizer.name": "sgd"},
            {"model.activation": "sigmoid", "optimizer.name": "sgd", "train.loss": "mse"},
            {"model.hidden": (32,)}, {"model.hidden": (512,), "grid.seeds": wide_seeds}]  # fmt: skip
    base = {**POSTS_NETWORK, "grid.inputs": ("/1", "/255", "/1000", "zscore", "[-1,1]")}
    return (base, *({**POSTS_NETWORK, "grid.inputs": EDGES, **arm} for arm in arms))


POSTS = {
    "grid": {"seeds": 8, "programs": posts_programs(WIDE_SEEDS)},
    "train": {"epochs": 2},
}
# No curvature in the smoke run: compiling the measurements costs ~10 s per program (measured: the
# quick study in 111 s with them, 30 s without, on the 2-core CPU).
POSTS_QUICK = {
    "grid": {"seeds": 2, "programs": posts_programs(2)},
    "train": {"epochs": 1},
    "data": {"train_limit": 2048, "test_limit": 1000},
    "curvature": {"enabled": False},
}
# Flags that keep the posts study (they apply to all of its arms); any other flag of these sections
# describes another study, which starts from RunConfig's defaults.
STUDY_SECTIONS = ("model", "optimizer", "train", "grid")
KEEPS_POSTS = {"train.epochs", "grid.seeds", "grid.seed_list"}


def posts_study(args) -> bool:
    """True when the command line asks for no other study than the posts'."""
    if getattr(args, "config", None) is not None or args.resume is not None:
        return False
    given = flags.given(args)
    named = {f"{section}.{name}" for section in STUDY_SECTIONS for name in given.get(section, {})}
    return named <= KEEPS_POSTS


def base_and_quick(args) -> tuple[RunConfig, flags.Overrides]:
    """The config the flags apply to and the --quick preset: the resumed run's config, the defaults
    (with --config, or flags that describe another study), or the posts study."""
    if args.resume is not None:
        from scalelab.results import RunDir

        return RunDir.open(args.resume).config(), QUICK
    if posts_study(args):
        return flags.apply(RunConfig(), POSTS), POSTS_QUICK
    return RunConfig(), QUICK


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
    config = config_from_args(args, *base_and_quick(args))
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
