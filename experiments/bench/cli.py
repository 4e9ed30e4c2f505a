"""The one entry point, ``python -m experiments.bench``: its flags, and the run from flags to JSON.

Nothing that imports JAX is imported at module level here: ``--host-devices`` must set XLA_FLAGS
before JAX initialises its backend, so ``run`` imports the measuring modules only after that.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from experiments.bench import report as reports
from experiments.bench.environment import request_host_devices
from experiments.bench.settings import CURVATURE_TOL, DEFAULTS, PROG, QUICK, resolve_settings, validate
from experiments.bench.timing import say
from scalelab import cli


def build_parser() -> cli.Parser:
    description = sys.modules[__package__].__doc__.split("\n\n")[0]
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=description)
    flags = [
        ("--models", cli.int_list, "grid sizes M"),
        ("--batch-sizes", cli.int_list, "minibatch sizes"),
        ("--train-limit", cli.positive_int, "training examples per epoch"),
        ("--test-limit", cli.positive_int, "test examples evaluated inside each timed epoch"),
        ("--repeats", cli.positive_int, "timed runs per figure, the best kept"),
        ("--gemm-size", cli.positive_int, "n of the n x n float32 GEMM that measures the ceiling"),
        ("--sequential-max", cli.positive_int, "time at most this many models one at a time, scaled to M"),
        ("--curvature-models", cli.int_list, "model counts for the curvature timing"),
        ("--curvature-examples", cli.positive_int, "examples in the loss whose Hessian is probed"),
        ("--lanczos-steps", cli.int_list, f"candidate step counts; the smallest reaching {CURVATURE_TOL:g} "
         "relative residual on model 0 is used"),
        ("--startup-train-limit", cli.positive_int, "training examples per epoch of the start-up study"),
        ("--trace-matvecs", cli.int_list, "matvec counts at which the trace estimators are compared"),
        ("--trace-keys", cli.positive_int, "independent keys per trace estimator and matvec count"),
    ]  # fmt: skip
    for flag, kind, text in flags:
        default = DEFAULTS[flag[2:].replace("-", "_")]
        p.add_argument(flag, type=kind, help=f"{text} (default {_csv(default)})")
    _add_switches(p)
    cli.add_data_flags(p)
    p.add_argument("--out", type=Path, help="JSON file to write (default runs/bench-TIMESTAMP.json)")
    quick = ", ".join(f"{k.replace('_', '-')} {_csv(v)}" for k, v in QUICK.items())
    p.add_argument("--quick", action="store_true", help=f"tiny run, well under a minute: {quick}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


# What is measured: (flag, on by default, help). On by default: --no-FLAG turns it off.
SECTIONS = (
    ("--curvature", True, "time the top Hessian eigenvalue, vmapped vs one model at a time"),
    ("--traces", True, "compare Hutchinson, Hutch++ and XTrace against the bench net's exact Hessian trace"),
    ("--startup", True, "time the default study's first epoch in fresh processes, compilation cache empty and full"),
    ("--numeric-axes", True, "race a grid over inputs x lr x init scale x eps against one over lr alone, same M"),
    ("--cost-curve", False, "also the cost curve: M = 1..1024 models (batch 32, 256), H = 32..2048, chunking checked"),
    ("--pyhessian", False, "also race PyHessian's top eigenvalue and trace (torch; make bench-anchors installs it)"),
    ("--keras", False, "also time Keras model.fit of one model, if keras is installed"),
)


def _add_switches(p: cli.Parser) -> None:
    """The flags that choose what is measured and where, beside the sizes."""
    p.add_argument("--curvature-loss", choices=("keras-ce", "ce"), help="loss for the Hessian (default keras-ce)")
    for flag, on, text in SECTIONS:
        if on:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=True, help=f"{text} (default on)")
        else:
            p.add_argument(flag, action="store_true", help=text)
    p.add_argument(
        "--models-per-block",
        type=cli.non_negative_int,
        help="models stepped together inside a grid's epoch (default: automatic, as scale_grid; 0: all at once)",
    )
    p.add_argument(
        "--compare-one-device",
        action="store_true",
        help="also time every grid that is spread over several devices on the first device alone, interleaved "
        "with the rest (one_device and devices_over_one_device in each row)",
    )
    p.add_argument(
        "--host-devices",
        type=cli.positive_int,
        help="CPU devices for JAX (XLA_FLAGS=--xla_force_host_platform_device_count=N); default one per "
        "usable core, as scale_grid; each grid is spread over as many as scale_grid would use",
    )


def _csv(value) -> str:
    if value is None:
        return "all"
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    settings = {**resolve_settings(args), "models_per_block": args.models_per_block,
                "compare_one_device": args.compare_one_device}  # fmt: skip
    jax_preloaded = request_host_devices(args.host_devices)
    # Only now: JAX may initialise from here on.
    from experiments.bench import anchors, cost_curve, curvature, environment, gemm, keras, numeric_axes  # noqa: I001
    from experiments.bench import startup, traces, training
    from scalelab.data import load_dataset

    started = time.perf_counter()
    dataset = load_dataset(args.data or "fashion_mnist", args.data_dir)
    validate(settings, dataset)
    report = reports.start(argv, settings, args)
    report["environment"] = environment.describe(args.host_devices, jax_preloaded)
    say(f"GEMM {settings['gemm_size']}^2 float32")
    report["gemm"] = gemm.gemm_peak(settings["gemm_size"], max(8, settings["repeats"]))
    report["gemm_peak_gflops"] = peak = report["gemm"]["gemm_peak_gflops"]
    report["training"] = training.training_bench(settings, dataset, peak)
    report["keras"] = keras.keras_bench(settings, dataset) if args.keras else dict(keras.NOT_REQUESTED)
    report["curvature"] = curvature.curvature_bench(settings, dataset, peak) if args.curvature else None
    report["trace_estimators"] = traces.trace_bench(settings, dataset) if args.traces else None
    data = (args.data or "fashion_mnist", None if args.data_dir is None else str(args.data_dir))
    report["startup"] = startup.startup_bench(settings, *data) if args.startup else None
    axes_models = settings["numeric_axes_models"]
    report["numeric_axes"] = (
        numeric_axes.numeric_axes_bench(settings, dataset, axes_models) if args.numeric_axes else None
    )
    report["cost_curve"] = cost_curve.cost_curve_bench(settings, dataset, peak) if args.cost_curve else None
    pyhessian = anchors.pyhessian_bench(settings, dataset) if args.pyhessian else dict(anchors.NOT_REQUESTED)
    report["anchors"] = {"pyhessian": pyhessian}
    reports.finish(report, started)
    out = args.out or Path("runs") / f"{PROG}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    reports.write_json(out, report)
    print(reports.format_report(report))
    print(f"\nwall time {report['wall_s']:.0f} s; JSON: {out}")
    return 0


main = cli.main_wrapper(PROG, run)
