"""Curvature against input scale: a dense, log-spaced sweep of divisors C (inputs = pixels / C).

    python -m experiments.curvature_vs_scale                    # C = 1 ... 1e5, 11 values, 2 seeds
    python -m experiments.curvature_vs_scale --quick            # seconds

One scale_grid run (every divisor is a model of one compiled grid) with curvature recorded at
init, every ``--curvature-every`` steps and after each epoch. On top of curvature.csv it writes
``scale_law.json``:

* the local exponents ``d log(lambda) / d log(C)`` between neighbouring divisors, at init, of the
  first layer's block and of the whole Hessian. With zero biases, multiplying the inputs by ``c``
  multiplies the first-layer kernel's block by exactly ``c^2`` *for a loss quadratic in the
  logits*; under softmax cross-entropy the softmax's own curvature changes too, so the exponent
  is -2 only where the softmax is not saturated (large C) and flattens where it is (small C);
* per divisor, the first measured step at which the top Hessian eigenvalue exceeds 2/lr and
  Adam's preconditioned sharpness exceeds 38/lr (the stability thresholds), if it ever does.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from experiments import scale_grid
from scalelab import cli
from scalelab.errors import UsageError
from scalelab.results import RunDir, write_json

PROG = "curvature_vs_scale"


def divisors(low_exp: float, high_exp: float, count: int) -> list[str]:
    """``count`` log-spaced divisors 10^low ... 10^high as transform names (``/1``, ``/3.16``...)."""
    return [f"/{float(f'{c:.3g}'):g}" for c in np.logspace(low_exp, high_exp, count)]


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--max-exponent", type=float, default=5.0, help="largest divisor 10^E (default 5)")
    p.add_argument("--divisors", type=cli.positive_int, default=11, help="how many divisors (default 11)")
    p.add_argument("--seeds", type=cli.positive_int, default=2, help="seeds 0..N-1 (default 2)")
    p.add_argument("--epochs", type=cli.positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--curvature-every", type=cli.non_negative_int, default=300, help="steps between measurements")
    p.add_argument("--loss", default="keras-ce", help="keras-ce (default), ce or mse")
    p.add_argument("--optimizer", default="adam", help="adam (default), sgd, ...")
    p.add_argument("--train-limit", type=cli.positive_int, help="use the first N training examples")
    p.add_argument("--test-limit", type=cli.positive_int, help="use the first N test examples")
    p.add_argument("--quick", action="store_true", help="seconds: 5 divisors, 1 seed, 1 epoch, 1024/1000 examples")
    cli.add_data_flags(p)
    p.add_argument("--out", type=Path, help=f"run directory (default runs/{PROG}-TIMESTAMP)")
    p.add_argument("--no-report", action="store_true", help="skip figures and report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def grid_argv(args) -> list[str]:
    count, seeds, epochs, every = args.divisors, args.seeds, args.epochs, args.curvature_every
    limit, test_limit = args.train_limit, args.test_limit
    if args.quick:
        count, seeds, epochs, every = 5, 1, 1, 16
        limit, test_limit = limit or 1024, test_limit or 1000
    if args.max_exponent < 0:
        raise UsageError(f"--max-exponent {args.max_exponent} must be >= 0 (divisors from 1 to 10^E)")
    argv = [
        "--inputs", ",".join(divisors(0.0, args.max_exponent, count)), "--seeds", seeds, "--epochs", epochs,
        "--curvature-every", every, "--loss", args.loss, "--optimizer", args.optimizer, "--out", args.out,
        "--data", args.data,
    ]  # fmt: skip
    if args.data_dir is not None:
        argv += ["--data-dir", args.data_dir]
    if limit is not None:
        argv += ["--train-limit", limit]
    if test_limit is not None:
        argv += ["--test-limit", test_limit]
    for flag in ("no_report", "no_progress"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    return [str(a) for a in argv]


def _median(rows: list[dict], field: str) -> float:
    values = [r[field] for r in rows if not r["skipped"] and math.isfinite(r[field])]
    return float(np.median(values)) if values else math.nan


def scale_law(curvature_rows: list[dict]) -> dict:
    """Local exponents of the init curvature in C, and threshold crossings per divisor."""
    by_divisor: dict[float, list[dict]] = {}
    for row in curvature_rows:
        by_divisor.setdefault(float(row["inputs"][1:]), []).append(row)
    cs = sorted(by_divisor)
    init = {c: [r for r in by_divisor[c] if r["step"] == 0] for c in cs}
    laws = {}
    for field in ("layer_0_top_eig", "top_eig_1"):
        points = [(c, _median(init[c], field)) for c in cs]
        laws[field] = [
            {"from": a, "to": b, "exponent": math.log(vb / va) / math.log(b / a) if va > 0 and vb > 0 else None}
            for (a, va), (b, vb) in zip(points, points[1:], strict=False)
        ]
    per_divisor = []
    for c in cs:
        rows = sorted(by_divisor[c], key=lambda r: r["step"])
        entry = {"divisor": c, "init_top_eig": _median(init[c], "top_eig_1"),
                 "init_layer_0_top_eig": _median(init[c], "layer_0_top_eig"),
                 "init_clipped_frac": _median(init[c], "clipped_wrong_frac")}  # fmt: skip
        for name, value, threshold in (
            ("sgd", "top_eig_1", "sgd_threshold"),
            ("adam", "adam_sharpness", "adam_threshold"),
        ):
            above = [r["step"] for r in rows if not r["skipped"] and r[value] > r[threshold]]
            entry[f"first_step_above_{name}_threshold"] = above[0] if above else None
        per_divisor.append(entry)
    return {"exponents_at_init": laws, "divisors": per_divisor}


def format_table(law: dict) -> str:
    lines = [
        f"{'divisor':>10} {'init lambda_max':>16} {'layer-0 block':>14} {'clipped':>8} {'>2/lr at':>9} {'>38/lr at':>9}"
    ]
    for d in law["divisors"]:
        lines.append(
            f"{d['divisor']:>10g} {d['init_top_eig']:>16.4g} {d['init_layer_0_top_eig']:>14.4g} "
            f"{d['init_clipped_frac']:>8.3f} {str(d['first_step_above_sgd_threshold']):>9} "
            f"{str(d['first_step_above_adam_threshold']):>9}"
        )
    lines.append("local exponent d log(layer-0 block) / d log(C) at init: " + ", ".join(
        "n/a" if e["exponent"] is None else f"{e['exponent']:.2f}" for e in law["exponents_at_init"]["layer_0_top_eig"]
    ))  # fmt: skip
    return "\n".join(lines)


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    args.out = args.out or Path("runs") / f"{PROG}-{time.strftime('%Y%m%d-%H%M%S')}"
    code = scale_grid.run(grid_argv(args))
    if code:
        return code
    law = scale_law(RunDir.open(args.out).curvature())
    write_json(args.out / "scale_law.json", law)
    print(format_table(law))
    print(f"scale law: {args.out / 'scale_law.json'}")
    return 0


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
