"""Throughput benchmark: one vmapped grid of models against the same models one after another.

    python -m experiments.bench                        # the default study (~3 minutes on 2 cores)
    python -m experiments.bench --quick                # a tiny run, well under a minute
    python -m experiments.bench --models 1,8 --batch-sizes 256 --no-curvature --out runs/b.json

Every figure comes from the same process run and is reported against figures of that run: the
machine's float32 GEMM rate (the ceiling), the training throughput of the default MLP
(784-128-10 relu, keras-ce, Adam) on Fashion-MNIST as one vmapped grid and as the same models
trained one at a time, and the time for the top Hessian eigenvalue of many models, vmapped and
one at a time. Conventions:

* A training sample costs ``6 * num_params`` FLOPs (forward 2N, backward 4N: Kaplan et al. 2020,
  eq. 2.1), the convention the figures use. The MLP's step does fewer: nothing needs the gradient
  with respect to the input, so the first layer's backward pass is one matmul, not two
  (``matmul_flops_per_sample``: 4.03 N for 784-128-10). Rates above 100% of the GEMM peak are
  therefore possible, and 6N overstates the real arithmetic rate by ~1.5x. The timed epoch also
  evaluates every model on ``--test-limit`` test examples (the grid's compiled epoch always
  does); that work is in the time but not in the FLOP count.
* ``vmapped_over_sequential`` is a throughput ratio: sequential seconds / vmapped seconds for the
  same models and work (> 1: the vmapped program is faster).
* Each program is compiled ahead of time (``jit(...).lower(...).compile()``, reported as
  ``compile_s``) and run once untimed. All training programs of a batch size (the single-model
  one for the sequential figures and every grid) are then timed *interleaved*, round-robin, with
  ``jax.block_until_ready``, so that load from elsewhere falls on every figure alike,
  best of ``--repeats`` (more for short epochs: at least MIN_TIMED_S of timed runs).
* ``step_ceiling_gflops`` (per batch size) is the rate of the bare step at the MLP's shapes: the
  forward and backward matmuls, the ReLU and a plain SGD update, for as many models as the grid
  steps together, on random data in one ``lax.scan``. It is what the GEMMs of a minibatch of that
  size can do on this machine; ``frac_of_step_ceiling`` compares training with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from scalelab import cli
from scalelab.errors import UsageError

# Nothing from scalelab that imports JAX is imported at module level: --host-devices must set
# XLA_FLAGS before JAX initialises its backend.

PROG = "bench"
FLOPS_PER_SAMPLE_PER_PARAM = 6
BASE_LR = 1e-3  # Keras' Adam default; a grid's variants use BASE_LR * LR_RATIO ** v
LR_RATIO = 0.8
VARIANTS_PER_SEED = 8
CURVATURE_TOL = 1e-3  # Ritz residual / |eigenvalue|
# Short epochs are timed more often: a figure is the best of at least --repeats runs and of
# enough runs to cover MIN_TIMED_S, since a 50 ms epoch on a shared machine is easily disturbed.
MIN_TIMED_S, MAX_REPEATS = 0.5, 20
STEP_CEILING_STEPS = 128
CURVATURE_CHUNK = 1024  # examples per HVP chunk: bounded memory, as for full-batch curvature
DEFAULTS = {
    "models": (1, 8, 32, 128), "batch_sizes": (32, 256), "train_limit": 4096, "test_limit": 256,
    "repeats": 2, "gemm_size": 2048, "sequential_max": 32, "curvature_models": (1, 16, 64),
    "curvature_examples": 2048, "lanczos_steps": (8, 16, 24, 32, 48, 64), "curvature_loss": "keras-ce",
}  # fmt: skip
QUICK = {
    "models": (1, 8), "batch_sizes": (32,), "train_limit": 512, "test_limit": 256, "repeats": 1,
    "gemm_size": 1024, "sequential_max": 8, "curvature_models": (1, 4), "curvature_examples": 512,
}  # fmt: skip


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=__doc__.split("\n\n")[0])
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
    ]  # fmt: skip
    for flag, kind, text in flags:
        default = DEFAULTS[flag[2:].replace("-", "_")]
        p.add_argument(flag, type=kind, help=f"{text} (default {_csv(default)})")
    p.add_argument("--curvature-loss", choices=("keras-ce", "ce"), help="loss for the Hessian (default keras-ce)")
    p.add_argument(
        "--curvature",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the top Hessian eigenvalue, vmapped vs one model at a time (default on)",
    )
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
    p.add_argument("--keras", action="store_true", help="also time Keras model.fit of one model, if keras is installed")
    p.add_argument(
        "--host-devices",
        type=cli.positive_int,
        help="CPU devices for JAX (XLA_FLAGS=--xla_force_host_platform_device_count=N); default one per "
        "usable core, as scale_grid; each grid is spread over as many as scale_grid would use",
    )
    cli.add_data_flags(p)
    p.add_argument("--out", type=Path, help="JSON file to write (default runs/bench-TIMESTAMP.json)")
    quick = ", ".join(f"{k.replace('_', '-')} {_csv(v)}" for k, v in QUICK.items())
    p.add_argument("--quick", action="store_true", help=f"tiny run, well under a minute: {quick}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _csv(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def resolve_settings(args) -> dict:
    """DEFAULTS, overridden by --quick's choices, overridden by every flag given explicitly."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    return {**DEFAULTS, **(QUICK if args.quick else {}), **given}


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    settings = {**resolve_settings(args), "models_per_block": args.models_per_block,
                "compare_one_device": args.compare_one_device}  # fmt: skip
    jax_preloaded = _request_host_devices(args.host_devices)
    from scalelab.data import load_dataset  # only now: JAX may initialise from here on

    started = time.perf_counter()
    dataset = load_dataset(args.data or "fashion_mnist", args.data_dir)
    _validate(settings, dataset)
    report = {"schema": "scalelab.bench/1", "command": ["python", "-m", f"experiments.{PROG}", *argv]}
    report["flags"] = {**settings, "curvature": args.curvature, "keras": args.keras, "quick": args.quick,
                       "host_devices": args.host_devices, "data": args.data or "fashion_mnist"}  # fmt: skip
    report["environment"] = environment(args.host_devices, jax_preloaded)
    _say(f"GEMM {settings['gemm_size']}^2 float32")
    report["gemm"] = gemm_peak(settings["gemm_size"], max(8, settings["repeats"]))
    peak = report["gemm"]["gemm_peak_gflops"]
    report["gemm_peak_gflops"] = peak
    report["training"] = training_bench(settings, dataset, peak)
    report["keras"] = (
        keras_bench(settings, dataset) if args.keras else {"requested": False, "available": None, "samples_per_s": None}
    )
    report["curvature"] = curvature_bench(settings, dataset) if args.curvature else None
    report["headline"] = headline(report)
    report["environment"]["load_average_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - started
    out = args.out or Path("runs") / f"{PROG}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    _write_json(out, report)
    print(format_report(report))
    print(f"\nwall time {report['wall_s']:.0f} s; JSON: {out}")
    return 0


_STARTED = time.perf_counter()


def _say(message: str) -> None:
    """A progress line on stderr, with the seconds since the program started."""
    print(f"{PROG}: [{time.perf_counter() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def _request_host_devices(count: int | None) -> bool:
    """Sets XLA_FLAGS for ``count`` host devices (None: one per core, as scale_grid); returns
    whether JAX was already imported.

    If it was (e.g. in a test process), the count only takes effect if JAX's backend has not
    started yet; ``environment`` records the device count JAX actually reports.
    """
    preloaded = "jax" in sys.modules
    if count is not None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    else:
        from scalelab.sharding import use_host_cores

        use_host_cores()
    return preloaded


def _validate(settings: dict, dataset) -> None:
    num_train, num_test = len(dataset.train_images), len(dataset.test_images)
    checks = [
        ("--train-limit", settings["train_limit"], num_train),
        ("--test-limit", settings["test_limit"], num_test),
        ("--curvature-examples", settings["curvature_examples"], num_train),
        ("--batch-sizes", max(settings["batch_sizes"]), min(settings["train_limit"], num_train)),
    ]
    for flag, value, limit in checks:
        if value > limit:
            raise UsageError(f"{flag} {value} is more than the {limit} training/test examples available; lower it")


def _write_json(path: Path, report: dict) -> None:
    from scalelab.results import write_json  # atomic: temp file, fsync, rename

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)


def environment(host_devices: int | None, jax_preloaded: bool) -> dict:
    import jax
    import jaxlib

    device = jax.devices()[0]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "host_devices_requested": host_devices,
        "jax_imported_before_flags": jax_preloaded,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_start": list(os.getloadavg()),
    }


# --- 1. the ceiling -----------------------------------------------------------------------------


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn`` (which must block until its result is ready)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_peak(size: int, repeats: int) -> dict:
    """float32 ``(n, n) @ (n, n)``, best of ``repeats`` after a warm-up, at JAX's default matmul
    precision: the one training uses (full float32 on CPU; TF32 on recent NVIDIA GPUs).

    With several CPU devices (which share the machine's cores) also one matmul per device at
    once; the peak is the better of the two, so that a grid spread over the host devices is
    measured against what they can do together.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    a, b = jax.random.normal(jax.random.PRNGKey(0), (2, size, size), jnp.float32)

    def rate(a, b, matmuls):
        matmul = jax.jit(jnp.matmul).lower(a, b).compile()
        jax.block_until_ready(matmul(a, b))
        return matmuls * 2 * size**3 / best_time(lambda: jax.block_until_ready(matmul(a, b)), repeats) / 1e9

    one_device = rate(a, b, 1)
    result = {"size": size, "repeats": repeats, "one_device_gflops": one_device, "all_devices_gflops": None}
    devices = jax.devices()
    if len(devices) > 1 and devices[0].platform == "cpu":
        sharded = NamedSharding(jax.make_mesh((len(devices),), ("devices",), devices=devices), PartitionSpec("devices"))
        a, b = (jax.device_put(jnp.broadcast_to(x, (len(devices), size, size)), sharded) for x in (a, b))
        result["all_devices_gflops"] = rate(a, b, len(devices))
    return {**result, "gemm_peak_gflops": max(one_device, result["all_devices_gflops"] or 0.0)}


# --- 2. training throughput ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GridTiming:
    compile_s: float
    models_per_block: int  # models stepped together, as the grid planner chose
    devices: int  # devices the grid is spread over, as scale_grid would
    call_s: tuple[float, ...]  # per call: the best single epoch of that call's models
    num_params: int  # per model
    steps_per_epoch: int
    finite: bool  # every model's training loss stayed finite


@dataclasses.dataclass
class PreparedGrid:
    """One compiled grid epoch and the states of each of its calls, ready to be timed."""

    compiled: object
    data: object
    calls: list  # per call: [state, hypers, order keys]
    compile_s: float
    models_per_block: int
    devices: int
    num_params: int
    steps_per_epoch: int


def prepare_grid(
    config,
    dataset,
    calls: Sequence[tuple[Sequence[int], Sequence[float]]],
    models_per_block: int | None = None,
    one_device: bool = False,
) -> PreparedGrid:
    """Compiles ``grid.train_epoch`` once for ``config``'s (S, V) grid and sets up each call.

    Each call is ``(seeds, lrs)`` with ``len(seeds) == config.grid.seeds`` and ``len(lrs) ==
    len(config.grid.lrs)``: the models of one invocation of the same compiled program (its own
    initial weights, minibatch order and learning rates). With ``time_grids`` this is the only
    code that touches the grid engine's interface. The grid is spread over the devices and
    stepped in the blocks that ``scale_grid`` would use (``runner.run_grid``); with
    ``one_device`` it stays on the first device.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scalelab import grid, sharding
    from scalelab.models import count_params
    from scalelab.runner import plan_grid

    plan = plan_grid(config, dataset, models_per_block)
    num_seeds, num_variants = len(calls[0][0]), len(calls[0][1])
    layout, mesh = sharding.grid_placement(num_seeds, num_variants, jax.devices()[:1] if one_device else None)
    program = dataclasses.replace(plan.program, mesh=mesh)
    input_dim = plan.data.train_x.shape[1]
    init = jax.jit(grid.init_grid, static_argnums=(0, 2, 3))
    prepared = []
    for seeds, lrs in calls:
        axes = dataclasses.replace(config.grid, seeds=len(seeds), lrs=tuple(lrs))
        init_keys, keys = grid.seed_keys(tuple(seeds))
        hypers = plan_grid(dataclasses.replace(config, grid=axes), dataset).hypers
        states = sharding.to_host(init(program, init_keys, len(lrs), input_dim))
        states, hypers, data, keys = sharding.shard_grid(layout, mesh, states, hypers, plan.data, np.asarray(keys))
        prepared.append([states, hypers, keys])
    epoch_fn = jax.jit(grid.train_epoch, static_argnums=0, donate_argnums=1)
    start = time.perf_counter()
    compiled = epoch_fn.lower(program, *prepared[0][:2], data, prepared[0][2], jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    per_device = layout.padded_seeds * layout.padded_variants // mesh.devices.size
    block = grid.models_per_block(per_device, program.models_per_block)
    steps = program.num_steps(len(plan.data.train_x))
    num_params = count_params(program.model, input_dim)
    return PreparedGrid(compiled, data, prepared, compile_s, block, mesh.devices.size, num_params, steps)


def time_grids(grids: Sequence[PreparedGrid], repeats: int) -> list[GridTiming]:
    """Times one epoch of every call of every grid, round-robin over all of them.

    Interleaving means a burst of load from elsewhere hits every figure alike, and the ratios
    between figures come from the same stretch of time. A call's figure is its best epoch of at
    least ``repeats`` and of enough epochs to cover ``MIN_TIMED_S``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    jobs = [(g, call) for g in grids for call in g.calls]
    for g, call in jobs:  # one untimed run: a program's first execution pays one-off set-up
        call[0], _ = jax.block_until_ready(g.compiled(call[0], call[1], g.data, call[2], jnp.int32(0)))
    best, timed, runs, finite = [math.inf] * len(jobs), [0.0] * len(jobs), [0] * len(jobs), [True] * len(jobs)

    def wants_more(i):
        return runs[i] < repeats or (timed[i] < MIN_TIMED_S and runs[i] < MAX_REPEATS)

    repeat = 1
    while any(wants_more(i) for i in range(len(jobs))):
        for i, (g, call) in enumerate(jobs):
            if not wants_more(i):
                continue
            start = time.perf_counter()
            call[0], metrics = g.compiled(call[0], call[1], g.data, call[2], jnp.int32(repeat))
            jax.block_until_ready((call[0], metrics))
            seconds = time.perf_counter() - start
            best[i], timed[i], runs[i] = min(best[i], seconds), timed[i] + seconds, runs[i] + 1
            finite[i] &= bool(np.isfinite(np.asarray(metrics.train_loss)).all())
        repeat += 1
    timings, i = [], 0
    for g in grids:
        n = len(g.calls)
        timings.append(GridTiming(g.compile_s, g.models_per_block, g.devices, tuple(best[i : i + n]), g.num_params,
                                  g.steps_per_epoch, all(finite[i : i + n])))  # fmt: skip
        i += n
    return timings


def grid_layout(num_models: int) -> tuple[int, tuple[float, ...]]:
    """(S seeds, V learning rates) with S x V = M: about ``VARIANTS_PER_SEED`` variants per seed.

    Variant v has lr ``BASE_LR * LR_RATIO**v``, so model (seed s, variant v) is the same model
    whatever M, and a smaller grid's models are among a larger one's.
    """
    seeds = max(1, num_models // VARIANTS_PER_SEED)
    while num_models % seeds:
        seeds -= 1
    return seeds, tuple(BASE_LR * LR_RATIO**v for v in range(num_models // seeds))


def grid_models(num_models: int) -> list[tuple[int, float]]:
    """The (seed, lr) of every model of the M-model grid, in the grid's flat order s * V + v."""
    seeds, lrs = grid_layout(num_models)
    return [(s, lr) for s in range(seeds) for lr in lrs]


def run_config(settings: dict, batch_size: int, seeds: int, lrs: tuple[float, ...]):
    """The default study's model, loss and optimiser on an (S, V) grid of lrs at inputs /255."""
    from scalelab.config import DataConfig, GridConfig, RunConfig, TrainConfig

    return RunConfig(
        data=DataConfig(train_limit=settings["train_limit"], test_limit=settings["test_limit"]),
        train=TrainConfig(batch_size=batch_size, epochs=1),
        grid=GridConfig(inputs=("/255",), seeds=seeds, lrs=lrs),
    )


def throughput(num_models: int, num_train: int, seconds: float, num_params: int, peak: float) -> dict:
    samples_per_s = num_models * num_train / seconds
    gflops = FLOPS_PER_SAMPLE_PER_PARAM * num_params * samples_per_s / 1e9
    return {"epoch_s": seconds, "samples_per_s": samples_per_s, "gflops": gflops, "frac_of_peak": gflops / peak}


def training_bench(settings: dict, dataset, peak: float) -> dict:
    """Per batch size: the models one at a time, then each M-model grid as one vmapped program."""
    num_train = min(settings["train_limit"], len(dataset.train_images))
    results, ceilings = [], {}
    input_dim = math.prod(dataset.train_images.shape[1:])
    (hidden,) = run_config(settings, 32, 1, (BASE_LR,)).model.hidden  # the benched MLP's one layer
    widths = (input_dim, hidden, dataset.num_classes)
    for batch_size in settings["batch_sizes"]:
        limit = settings["sequential_max"]
        needed = list(dict.fromkeys(model for m in settings["models"] for model in grid_models(m)[:limit]))
        _say(f"training: batch {batch_size}: compiling one single-model epoch ({len(needed)} models one after "
             f"another) and the {', '.join(map(str, settings['models']))}-model grids")  # fmt: skip
        single = prepare_grid(run_config(settings, batch_size, 1, (BASE_LR,)), dataset,
                              [((s,), (lr,)) for s, lr in needed])  # fmt: skip

        def grid(seeds, lrs, one_device=False, batch_size=batch_size):
            config = run_config(settings, batch_size, seeds, lrs)
            return prepare_grid(config, dataset, [(range(seeds), lrs)], settings["models_per_block"], one_device)

        layouts = [grid_layout(m) for m in settings["models"]]
        grids = [grid(*layout) for layout in layouts]
        # The same grids on the first device alone, for those spread over several.
        spread = [i for i, g in enumerate(grids) if g.devices > 1] if settings["compare_one_device"] else []
        alone = [grid(*layouts[i], one_device=True) for i in spread]
        _say(f"training: batch {batch_size}: timing all of them, interleaved")
        sequential, *timings = time_grids([single, *grids, *alone], settings["repeats"])
        vmapped, one_device = timings[: len(grids)], dict(zip(spread, timings[len(grids) :], strict=True))
        per_model_s = dict(zip(needed, sequential.call_s, strict=True))
        rows = [
            training_row(settings, dataset, batch_size, m, vm, sequential, per_model_s, peak, one_device.get(i))
            for i, (m, vm) in enumerate(zip(settings["models"], vmapped, strict=True))
        ]
        block, devices = rows[-1]["vmapped"]["models_per_block"], rows[-1]["vmapped"]["devices"]
        _say(f"step ceiling: batch {batch_size}, {block} models on each of {devices} device(s), matmuls + SGD only")
        ceiling = step_ceiling(batch_size, block, devices, widths, settings["repeats"])
        ceilings[str(batch_size)] = {
            "models": block, "devices": devices, "gflops": ceiling, "frac_of_peak": ceiling / peak
        }  # fmt: skip
        for row in rows:
            for kind in ("vmapped", "sequential"):
                row[kind]["frac_of_step_ceiling"] = row[kind]["gflops"] / ceiling
        results += rows
    return {
        "model": "MLP 784-128-10 relu, keras-ce, adam (lr 1e-3 * 0.8**v), inputs /255",
        "num_params": results[0]["num_params"],
        "flops_per_sample": f"{FLOPS_PER_SAMPLE_PER_PARAM} x num_params (forward 2N + backward 4N)",
        "matmul_flops_per_sample": matmul_flops_per_sample(widths),
        "six_n_over_matmul_flops": FLOPS_PER_SAMPLE_PER_PARAM
        * results[0]["num_params"]
        / matmul_flops_per_sample(widths),
        "train_examples": num_train,
        "test_examples_evaluated": settings["test_limit"],
        "evaluation_included": True,
        "timing": "one epoch = scan over minibatches + test evaluation, compiled ahead of time, one untimed "
        "warm-up run; all programs of a batch size timed interleaved (round-robin), each figure the best of "
        f"{settings['repeats']} or more epochs (>= {MIN_TIMED_S} s timed); evaluation FLOPs not counted",
        "step_ceiling": ceilings,
        "results": results,
    }


def matmul_flops_per_sample(widths: tuple[int, ...]) -> int:
    """The matmul FLOPs of one sample's training step for an MLP of these layer widths: forward
    and weight gradients for every layer, input gradients for every layer but the first."""
    products = [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return 2 * sum(products) + 2 * sum(products) + 2 * sum(products[1:])


def step_ceiling(batch_size: int, num_models: int, num_devices: int, widths: tuple[int, ...], repeats: int) -> float:
    """GFLOP/s of the bare training step at these shapes: matmuls, ReLU and SGD, nothing else,
    for ``num_models`` models on each of the first ``num_devices`` devices.

    No loss, optimiser state, gather, input transform or bookkeeping: an upper bound for what the
    real step (``train.train_step``) can reach with minibatches of ``batch_size``.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    d, h, c = widths
    mesh = jax.make_mesh((num_devices,), ("models",), devices=jax.devices()[:num_devices])
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (STEP_CEILING_STEPS, num_models * num_devices, batch_size, d))
    w1 = jax.random.normal(keys[1], (num_models * num_devices, d, h)) * d**-0.5
    w2 = jax.random.normal(keys[2], (num_models * num_devices, h, c)) * h**-0.5
    x = jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "models")))  # each device its own models
    w1, w2 = (jax.device_put(w, NamedSharding(mesh, PartitionSpec("models"))) for w in (w1, w2))

    def steps(w1, w2, x):
        def body(weights, xb):
            w1, w2 = weights
            z = jnp.einsum("mbd,mdh->mbh", xb, w1)
            a = jnp.maximum(z, 0)
            dy = jnp.einsum("mbh,mhc->mbc", a, w2) * 1e-3  # stands in for the loss gradient
            dz = jnp.einsum("mbc,mhc->mbh", dy, w2) * (z > 0)
            dw1, dw2 = jnp.einsum("mbd,mbh->mdh", xb, dz), jnp.einsum("mbh,mbc->mhc", a, dy)
            return (w1 - 1e-3 * dw1, w2 - 1e-3 * dw2), None

        return jax.lax.scan(body, (w1, w2), x)[0]

    run = jax.jit(steps).lower(w1, w2, x).compile()
    jax.block_until_ready(run(w1, w2, x))
    seconds = best_time(lambda: jax.block_until_ready(run(w1, w2, x)), max(3, repeats))
    params = d * h + h + h * c + c  # biases included, as in num_params
    samples = num_models * num_devices * batch_size * STEP_CEILING_STEPS
    return FLOPS_PER_SAMPLE_PER_PARAM * params * samples / seconds / 1e9


def training_row(
    settings: dict,
    dataset,
    batch_size: int,
    m: int,
    vm: GridTiming,
    sequential: GridTiming,
    per_model_s: dict,
    peak: float,
    one_device: GridTiming | None = None,
) -> dict:
    """One (M, batch) figure: the M-model grid vmapped, against its models' sequential epochs
    (and against the same grid on one device, when timed)."""
    seeds, lrs = grid_layout(m)
    timed = grid_models(m)[: settings["sequential_max"]]
    per_model = [per_model_s[model] for model in timed]
    seq_s = sum(per_model) * m / len(timed)
    if len(timed) == m:
        method = f"each of the {m} models' epochs timed one after another"
    else:
        method = f"the first {len(timed)} of {m} models timed one after another, total scaled by {m}/{len(timed)}"
    num_train = min(settings["train_limit"], len(dataset.train_images))
    rate = functools.partial(throughput, m, num_train, num_params=vm.num_params, peak=peak)
    row = {
        "models": m, "batch_size": batch_size, "seeds": seeds, "lrs": list(lrs), "num_params": vm.num_params,
        "steps_per_epoch": vm.steps_per_epoch, "finite": vm.finite and sequential.finite,
        "vmapped": {"compile_s": vm.compile_s, "models_per_block": vm.models_per_block, "devices": vm.devices,
                    **rate(vm.call_s[0])},
        "sequential": {"compile_s": sequential.compile_s, **rate(seq_s), "timed_models": len(timed),
                       "sequential_method": method, "per_model_epoch_s": {
                           "min": min(per_model), "median": statistics.median(per_model), "max": max(per_model)}},
        "vmapped_over_sequential": seq_s / vm.call_s[0],
    }  # fmt: skip
    if one_device is not None:
        row["one_device"] = {"compile_s": one_device.compile_s, "models_per_block": one_device.models_per_block,
                             **rate(one_device.call_s[0])}  # fmt: skip
        row["devices_over_one_device"] = one_device.call_s[0] / vm.call_s[0]
    return row


# --- 3. Keras, for reference ----------------------------------------------------------------


def keras_bench(settings: dict, dataset) -> dict:
    """``model.fit`` samples/s of one 784-128-10 model per batch size; null if keras is missing.

    Keras runs on JAX (``KERAS_BACKEND=jax`` unless set otherwise): the same XLA as scalelab, and
    the one backend this project installs.
    """
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        _say("keras is not installed; its throughput is recorded as null")
        return {"requested": True, "available": False, "samples_per_s": None}
    import numpy as np

    n = min(settings["train_limit"], len(dataset.train_images))
    x = dataset.train_images[:n].reshape(n, -1).astype(np.float32) / 255
    y = dataset.train_labels[:n].astype(np.int32)
    rates = {}
    for batch_size in settings["batch_sizes"]:
        _say(f"keras: batch {batch_size}")
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(dataset.num_classes, activation="softmax")])  # fmt: skip
        model.compile(optimizer=keras.optimizers.Adam(BASE_LR), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # compiles
        seconds = best_time(lambda m=model, b=batch_size: m.fit(x, y, batch_size=b, epochs=1, verbose=0),
                            settings["repeats"])  # fmt: skip
        rates[str(batch_size)] = n / seconds
    return {"requested": True, "available": True, "version": keras.__version__, "backend": keras.backend.backend(),
            "samples_per_s": rates, "note": "one model, model.fit of one epoch, no evaluation"}  # fmt: skip


# --- 4. curvature -------------------------------------------------------------------------------


def top_eigenvalue_fn(model, loss_fn):
    """``top(params, v0, data, num_steps) -> (eigenvalue, Ritz residual)`` of the mean loss on data."""
    from scalelab import curvature

    def batch_loss(params, batch):
        x, y = batch
        return loss_fn(model.apply(params, x), y).mean()

    def top(params, v0, data, num_steps):
        hvp_fn = curvature.make_chunked_hvp(batch_loss, data, min(CURVATURE_CHUNK, data[0].shape[0]))
        matvec = curvature.flat_matvec(hvp_fn, params)
        pairs = curvature.top_eigenpairs(matvec, v0, num_steps, 1)
        return pairs.values[0], pairs.residuals[0]

    return top


def curvature_bench(settings: dict, dataset) -> dict:
    """Top-1 Hessian eigenvalue at initial params: one vmapped program vs a jitted model at a time."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from scalelab.losses import get_loss
    from scalelab.models import make_model

    n = settings["curvature_examples"]
    # Inputs /255 applied to the data, as the grid's "/255" transform does through the first layer.
    data = (jnp.asarray(dataset.train_images[:n].reshape(n, -1), jnp.float32) / 255,
            jnp.asarray(dataset.train_labels[:n], jnp.int32))  # fmt: skip
    model = make_model((128,), dataset.num_classes, "relu", "glorot-uniform")
    top = top_eigenvalue_fn(model, get_loss(settings["curvature_loss"]))
    counts = settings["curvature_models"]
    params = jax.vmap(lambda s: model.init(jax.random.PRNGKey(s), data[0][:1]))(jnp.arange(max(counts)))
    singles = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(max(counts))]
    v0 = jax.random.normal(jax.random.PRNGKey(0), ravel_pytree(singles[0])[0].shape)
    single = jax.jit(top, static_argnums=3)
    steps, tried = choose_lanczos_steps(single, singles[0], v0, data, settings["lanczos_steps"])
    results = [time_curvature(top, single, params, singles, v0, data, steps, c, settings["repeats"]) for c in counts]
    return {
        "what": "top-1 Hessian eigenvalue at initial params (seeds 0..M-1), Lanczos + 1 Ritz residual matvec",
        "examples": n, "loss": settings["curvature_loss"], "inputs": "/255", "hvp_chunk": min(CURVATURE_CHUNK, n),
        "tolerance": CURVATURE_TOL, "steps_tried": tried, "num_steps": steps,
        "model_0_rel_residual": tried[str(steps)],
        "converged_on_model_0": tried[str(steps)] <= CURVATURE_TOL,
        "worst_rel_residual": float(np.max([r["worst_rel_residual"] for r in results])),
        "results": results,
    }  # fmt: skip


def choose_lanczos_steps(single, params, v0, data, candidates: Sequence[int]) -> tuple[int, dict]:
    """The smallest candidate whose Ritz residual / |eigenvalue| on ``params`` is within tolerance."""
    tried = {}
    for steps in sorted(candidates):
        value, residual = single(params, v0, data, steps)
        tried[str(steps)] = float(residual / abs(value))
        _say(f"curvature: {steps} Lanczos steps on model 0, relative residual {tried[str(steps)]:.1e}")
        if tried[str(steps)] <= CURVATURE_TOL:
            return steps, tried
    _say(f"curvature: no candidate reached {CURVATURE_TOL:g}; using {steps} steps")
    return steps, tried


def time_curvature(top, single, params, singles, v0, data, steps: int, count: int, repeats: int) -> dict:
    import jax
    import numpy as np

    _say(f"curvature: {count} models, vmapped and one at a time")
    batch = jax.tree.map(lambda a: a[:count], params)
    start = time.perf_counter()
    vmapped = jax.jit(jax.vmap(top, in_axes=(0, None, None, None)), static_argnums=3).lower(batch, v0, data, steps)
    vmapped = vmapped.compile()
    compile_s = time.perf_counter() - start
    outputs = {}

    def run_vmapped():
        outputs["vmapped"] = jax.block_until_ready(vmapped(batch, v0, data))

    def run_sequential():
        outputs["sequential"] = [jax.block_until_ready(single(p, v0, data, steps)) for p in singles[:count]]

    run_vmapped()  # untimed warm-up of both; the first run pays one-off set-up
    jax.block_until_ready(single(singles[0], v0, data, steps))
    vmapped_s = best_time(run_vmapped, repeats)
    sequential_s = best_time(run_sequential, repeats)
    values, residuals = (np.asarray(a) for a in outputs["vmapped"])
    rel = np.concatenate([residuals / np.abs(values), [float(r / abs(v)) for v, r in outputs["sequential"]]])
    return {
        "models": count, "compile_s": compile_s, "vmapped_s": vmapped_s, "sequential_s": sequential_s,
        "vmapped_over_sequential": sequential_s / vmapped_s, "worst_rel_residual": float(rel.max()),
        "eigenvalue_range": [float(values.min()), float(values.max())],
    }  # fmt: skip


# --- report -------------------------------------------------------------------------------------


def headline(report: dict) -> dict:
    rows = report["training"]["results"]
    best = max(rows, key=lambda r: r["vmapped"]["gflops"])
    return {
        "gemm_peak_gflops": report["gemm_peak_gflops"],
        "best_vmapped_gflops": best["vmapped"]["gflops"],
        "best_vmapped_frac_of_peak": best["vmapped"]["frac_of_peak"],
        "training_vmapped_over_sequential": {
            f"M{r['models']}_b{r['batch_size']}": r["vmapped_over_sequential"] for r in rows
        },
        "curvature_vmapped_over_sequential": None
        if report["curvature"] is None
        else {f"M{r['models']}": r["vmapped_over_sequential"] for r in report["curvature"]["results"]},
    }


def format_report(report: dict) -> str:
    env, train = report["environment"], report["training"]
    lines = [
        f"{env['platform']} ({env['device_kind']}, {env['device_count']} device(s), {env['cpu_count']} CPUs), "
        f"jax {env['jax']}; load average {env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f}",
        f"GEMM float32 {report['gemm']['size']}^2: {report['gemm_peak_gflops']:.1f} GFLOP/s (the ceiling; "
        f"{_gemm_detail(report['gemm'])})",
        "",
        f"training: {train['model']}; {train['train_examples']} train examples per epoch, plus evaluation of "
        f"{train['test_examples_evaluated']} test examples inside the timed epoch; "
        f"GFLOP/s at {train['flops_per_sample']}; the step's matmuls do {train['matmul_flops_per_sample']:,} "
        f"FLOPs per sample, so 6N is {train['six_n_over_matmul_flops']:.2f}x the real arithmetic",
    ]
    header = (f"{'batch':>5} {'M':>4} {'SxV':>6} {'dev':>3} {'blk':>3} | {'vmapped samples/s':>17} {'GFLOP/s':>8} "
              f"{'peak':>5} {'step':>5} | {'sequential samples/s':>20} {'GFLOP/s':>8} {'peak':>5} | "
              f"{'vmap/seq':>8}")  # fmt: skip
    lines += [header, "-" * len(header)]
    for r in train["results"]:
        vm, sq = r["vmapped"], r["sequential"]
        scaled = "*" if sq["timed_models"] < r["models"] else " "
        lines.append(
            f"{r['batch_size']:>5} {r['models']:>4} {r['seeds']:>3}x{len(r['lrs']):<2} {vm['devices']:>3} "
            f"{vm['models_per_block']:>3} | "
            f"{vm['samples_per_s']:>17,.0f} {vm['gflops']:>8.1f} {vm['frac_of_peak']:>5.0%} "
            f"{vm['frac_of_step_ceiling']:>5.0%} | {sq['samples_per_s']:>19,.0f}{scaled} "
            f"{sq['gflops']:>8.1f} {sq['frac_of_peak']:>5.0%} | {r['vmapped_over_sequential']:>8.2f}"
        )
    for r in (r for r in train["results"] if "one_device" in r):
        lines.append(
            f"batch {r['batch_size']}, M={r['models']} on one device: {r['one_device']['samples_per_s']:,.0f} "
            f"samples/s; {r['vmapped']['devices']} devices over one device: {r['devices_over_one_device']:.2f}"
        )
    if any(r["sequential"]["timed_models"] < r["models"] for r in train["results"]):
        lines.append("* sequential figure from a timed subset of the models, scaled (see sequential_method)")
    lines.append("dev: devices the grid is spread over; blk: models each steps together; peak: of the GEMM ceiling;")
    lines.append("step: of the bare step (matmuls + SGD) at that batch size: " + ", ".join(
        f"batch {b}, {c['models']} models x {c['devices']} device(s): {c['gflops']:.1f} GFLOP/s "
        f"({c['frac_of_peak']:.0%} of peak)"
        for b, c in train["step_ceiling"].items()))  # fmt: skip
    lines += ["", _keras_line(report["keras"])]
    if report["curvature"] is not None:
        lines += ["", *_curvature_lines(report["curvature"])]
    return "\n".join(lines)


def _gemm_detail(gemm: dict) -> str:
    if gemm["all_devices_gflops"] is None:
        return "one device"
    return f"one device {gemm['one_device_gflops']:.1f}, one matmul per device at once {gemm['all_devices_gflops']:.1f}"


def _keras_line(keras: dict) -> str:
    if not keras["requested"]:
        return "keras: not requested (--keras)"
    if not keras["available"]:
        return "keras: not installed (recorded as null)"
    rates = ", ".join(f"batch {b}: {v:,.0f} samples/s" for b, v in keras["samples_per_s"].items())
    return f"keras {keras['version']} ({keras['backend']}) model.fit, one model: {rates}"


def _curvature_lines(curv: dict) -> list[str]:
    lines = [
        f"curvature: top-1 Hessian eigenvalue, {curv['examples']} examples, {curv['loss']}, "
        f"{curv['num_steps']} Lanczos steps (relative residual on model 0: {curv['model_0_rel_residual']:.1e}; "
        f"worst over all models {curv['worst_rel_residual']:.1e}; tolerance {curv['tolerance']:g})",
    ]
    header = f"{'M':>4} | {'vmapped s':>9} {'one-at-a-time s':>15} | {'vmap/seq':>8} | {'compile s':>9}"
    lines += [header, "-" * len(header)]
    for r in curv["results"]:
        lines.append(
            f"{r['models']:>4} | {r['vmapped_s']:>9.3f} {r['sequential_s']:>15.3f} | "
            f"{r['vmapped_over_sequential']:>8.2f} | {r['compile_s']:>9.1f}"
        )
    return lines


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
