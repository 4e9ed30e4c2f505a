"""The main job: train a grid of MLPs (seeds x input transforms x learning rates) on
Fashion-MNIST as one compiled program, and write a run directory.

    python -m experiments.scale_grid                      # the default study (minutes on 2 cores)
    python -m experiments.scale_grid --quick              # a seconds-long smoke run
    python -m experiments.scale_grid --inputs /1,/255,/1000 --seeds 5 --epochs 5 --out runs/posts
    python -m experiments.scale_grid --resume runs/posts  # continue a killed or stopped run
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from scalelab import cli
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, RunConfig, TrainConfig
from scalelab.errors import UsageError
from scalelab.optim import DEFAULT_LR, OPTIMIZERS, OptimizerConfig
from scalelab.results import RunDir, summarize
from scalelab.transforms import VALID_FORMS, parse_transforms

PROG = "scale_grid"
# --quick: seconds, not minutes: a slice of the data, two epochs, the posts' three scales.
QUICK = {"inputs": "/1,/255,/1000", "seeds": 2, "epochs": 2, "train_limit": 2048, "test_limit": 1000}


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=__doc__.split("\n\n")[0])
    defaults = RunConfig()
    p.add_argument("--inputs", help=f"comma-separated input transforms: {VALID_FORMS} "
                   f"(default: {','.join(defaults.grid.inputs)})")  # fmt: skip
    p.add_argument("--seeds", type=cli.positive_int, help=f"number of seeds, 0..N-1 (default {defaults.grid.seeds})")
    p.add_argument("--epochs", type=cli.positive_int, help=f"epochs (default {defaults.train.epochs})")
    p.add_argument("--batch-size", type=cli.positive_int, help="minibatch size (default 32, as Keras)")
    p.add_argument("--hidden", type=cli.int_list, help="hidden widths, e.g. 128 or 128,128 (default 128)")
    p.add_argument("--activation", help="relu (default), sigmoid, tanh, gelu, identity")
    p.add_argument("--init", help="glorot-uniform (default, Keras), he-normal, lecun-normal")
    p.add_argument("--loss", help="keras-ce (default: Keras' clipped cross-entropy), ce (exact, from logits), "
                   "mse (softmax vs one-hot)")  # fmt: skip
    p.add_argument("--optimizer", help=f"{', '.join(OPTIMIZERS)} (default adam, Keras defaults)")
    p.add_argument("--lr", type=cli.float_list, help="learning rate(s), comma-separated: a grid axis "
                   "(default: adam/adamw/rmsprop 1e-3, sgd/momentum 1e-2)")  # fmt: skip
    p.add_argument(
        "--patience",
        type=cli.non_negative_int,
        help="early stopping on the test loss, Keras semantics (default 0 = off)",
    )
    p.add_argument("--train-limit", type=cli.positive_int, help="use the first N training examples")
    p.add_argument("--test-limit", type=cli.positive_int, help="use the first N test examples")
    cli.add_data_flags(p)
    p.add_argument("--out", type=Path, help="run directory to create (default runs/scale_grid-TIMESTAMP)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last finished epoch; flags left out keep the run's values",
    )
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run: "
                   + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()))  # fmt: skip
    p.add_argument(
        "--max-models-per-chunk",
        type=cli.positive_int,
        help="train at most this many models at once (default: as many as fit in memory)",
    )
    p.add_argument(
        "--models-per-block",
        type=cli.non_negative_int,
        metavar="N",
        help="on a lone CPU, train N models at a time inside each compiled epoch, so their state stays in "
        "cache (default: about 4 MiB of parameters and optimiser state; 0: all at once)",
    )
    curv = defaults.curvature
    p.add_argument("--no-curvature", action="store_true", help="measure nothing while training (no curvature.csv)")
    p.add_argument(
        "--curvature-every",
        type=cli.non_negative_int,
        metavar="K",
        help="also measure every K steps within each epoch (default 0: at init and after each epoch)",
    )
    p.add_argument(
        "--curvature-examples",
        type=cli.positive_int,
        metavar="N",
        help=f"measure on the first N training examples (default {curv.examples})",
    )
    p.add_argument("--top-k", type=cli.positive_int, help=f"top Hessian eigenvalues to record (default {curv.top_k})")
    p.add_argument(
        "--lanczos-steps",
        type=cli.positive_int,
        help=f"Lanczos steps per eigenvalue run (default {curv.lanczos_steps})",
    )
    p.add_argument(
        "--trace-probes",
        type=cli.non_negative_int,
        help=f"Hutchinson probes for the Hessian trace, 0 = none (default {curv.trace_probes})",
    )
    p.add_argument(
        "--checkpoint-every",
        type=cli.positive_int,
        default=1,
        metavar="N",
        help="write metrics and a resumable checkpoint every N epochs (default 1)",
    )
    p.add_argument("--no-save-params", action="store_true", help="do not keep every epoch's params in params/")
    p.add_argument("--no-report", action="store_true", help="do not write figures and report.md/html at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def config_from_args(args, base: RunConfig) -> RunConfig:
    """``base`` overridden by every flag given explicitly (and by --quick's choices)."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if args.quick:
        given = {**QUICK, **given}
    optimizer_name = given.get("optimizer", base.optimizer.name)
    optimizer = dataclasses.replace(base.optimizer, name=optimizer_name) if "optimizer" in given else base.optimizer
    if "lr" in given:
        lrs = given["lr"]
    elif optimizer_name != base.optimizer.name:
        lrs = (DEFAULT_LR[optimizer_name],)
    else:
        lrs = base.grid.lrs
    inputs = tuple(t.name for t in parse_transforms(given["inputs"])) if "inputs" in given else base.grid.inputs
    pick = lambda key, section: given.get(key, getattr(section, key))  # noqa: E731
    return RunConfig(
        data=DataConfig(
            name=given.get("data", base.data.name),
            data_dir=given.get("data_dir", base.data.data_dir),
            train_limit=pick("train_limit", base.data),
            test_limit=pick("test_limit", base.data),
        ),
        model=ModelConfig(
            hidden=pick("hidden", base.model), activation=pick("activation", base.model), init=pick("init", base.model)
        ),
        optimizer=optimizer,
        train=TrainConfig(
            loss=pick("loss", base.train),
            epochs=pick("epochs", base.train),
            batch_size=pick("batch_size", base.train),
            patience=pick("patience", base.train),
        ),
        grid=GridConfig(inputs=inputs, seeds=pick("seeds", base.grid), lrs=tuple(lrs)),
        curvature=_curvature_config(given, base.curvature),
    )


CURVATURE_FLAGS = {"curvature_every": "every", "curvature_examples": "examples", "top_k": "top_k",
                   "lanczos_steps": "lanczos_steps", "trace_probes": "trace_probes"}  # fmt: skip


def _curvature_config(given: dict, base: CurvatureConfig) -> CurvatureConfig:
    changes = {field: given[flag] for flag, field in CURVATURE_FLAGS.items() if flag in given}
    if given.get("no_curvature"):
        changes["enabled"] = False
    elif changes and not base.enabled:
        changes["enabled"] = True
    config = dataclasses.replace(base, **changes)
    if config.top_k > config.lanczos_steps:
        raise UsageError(f"--top-k {config.top_k} needs at least as many --lanczos-steps (now {config.lanczos_steps})")
    if config.trace_probes == 1:
        raise UsageError("--trace-probes 1 gives no standard error; use 0 (no trace) or at least 2")
    return config


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.resume is not None and args.out is not None and args.out != args.resume:
        raise UsageError("--resume RUN_DIR continues RUN_DIR in place; drop --out, or drop --resume to start anew")
    if args.resume is not None:
        run_dir = RunDir.open(args.resume)
        config = config_from_args(args, run_dir.config())
        from scalelab.runner import check_resumable

        check_resumable(run_dir, config)
    else:
        config = config_from_args(args, RunConfig(optimizer=OptimizerConfig()))
        _validate_names(config)
        out = args.out or Path("runs") / f"{PROG}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Imported here so that --help and flag errors answer instantly, before JAX loads.
    from scalelab.data import load_dataset
    from scalelab.progress import EpochProgress
    from scalelab.runner import run_grid
    from scalelab.sharding import maybe_initialize_distributed, use_host_cores

    maybe_initialize_distributed()  # a no-op unless a multi-host launch is configured (README)
    use_host_cores()  # on a CPU, one device per core: large grids are split among them (README, Speed)

    dataset = load_dataset(config.data.name, config.data.data_dir)
    if args.resume is None:
        from scalelab.runner import plan_grid

        plan_grid(config, dataset, args.models_per_block)  # every remaining check, before a run directory exists
        run_dir = RunDir.create(out, config)
    print(f"{PROG}: {_describe(config)} -> {run_dir.path}", file=sys.stderr)
    with EpochProgress(config, enabled=not args.no_progress) as progress:
        _, rows = run_grid(
            config, dataset, run_dir, resume=args.resume is not None,
            max_models_per_chunk=args.max_models_per_chunk, models_per_block=args.models_per_block,
            on_epoch=progress.update,
            save_params=not args.no_save_params, checkpoint_every=args.checkpoint_every,
        )  # fmt: skip
    summary = summarize(rows)
    run_dir.write_summary(summary)
    run_dir.write_status("complete", epochs=config.train.epochs)
    print(format_table(summary))
    files = "metrics.csv, summary.json, config.json" + (", curvature.csv" if config.curvature.enabled else "")
    print(f"\nrun directory: {run_dir.path} ({files})")
    if not args.no_report:
        write_report(run_dir.path)
    return 0


def write_report(run_dir: Path) -> None:
    """Figures and report.md/html for the finished run (``python -m analysis.report`` does the same)."""
    from analysis import report

    written = report.write_report(run_dir)
    print(f"report: {', '.join(str(p) for p in written)}")


def _validate_names(config: RunConfig) -> None:
    from scalelab.losses import get_loss
    from scalelab.models import make_model

    get_loss(config.train.loss)
    make_model(config.model.hidden, 10, config.model.activation, config.model.init)


def _describe(config: RunConfig) -> str:
    models = config.grid.seeds * len(config.grid.inputs) * len(config.grid.lrs)
    hidden = "-".join(str(w) for w in config.model.hidden)
    return (
        f"{models} models ({config.grid.seeds} seeds x {len(config.grid.inputs)} inputs x "
        f"{len(config.grid.lrs)} lr), MLP {hidden} {config.model.activation}, {config.train.loss}, "
        f"{config.optimizer.name}, batch {config.train.batch_size}, {config.train.epochs} epochs"
    )


def format_table(summary: dict) -> str:
    """A compact per-(inputs, lr) table of final values: mean [min, max] over seeds."""
    header = f"{'inputs':>14} {'lr':>8} {'train loss':>22} {'test loss':>22} {'test acc':>22} {'div':>4} {'stop':>4}"
    lines = [header, "-" * len(header)]

    def cell(stat):
        return "n/a" if stat is None else f"{stat['mean']:.3f} [{stat['min']:.3f},{stat['max']:.3f}]"

    for g in summary["by_inputs"]:
        lines.append(
            f"{g['inputs']:>14} {g['lr']:>8.2g} {cell(g['train_loss']):>22} {cell(g['test_loss']):>22} "
            f"{cell(g['test_acc']):>22} {g['diverged']:>4} {g['stopped']:>4}"
        )
    return "\n".join(lines)


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
