"""Curvature against input scale: a dense, log-spaced sweep of divisors C (inputs = pixels / C).

    python -m experiments.curvature_vs_scale                    # C = 1 ... 1e5, 11 values, 2 seeds
    python -m experiments.curvature_vs_scale --quick            # seconds

One ``scalelab.study.run`` of ``CONFIG`` with a dense divisor axis (every divisor is a model of
one compiled grid) and curvature recorded at init, every ``--curvature-every`` steps and after
each epoch; every config flag applies. On top of curvature.csv it writes
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

import dataclasses
import math
import sys

import numpy as np

from experiments import common
from scalelab import cli, flags, study
from scalelab.config import CurvatureConfig, GridConfig, RunConfig, TrainConfig
from scalelab.errors import UsageError
from scalelab.results import write_json

PROG = "curvature_vs_scale"
CONFIG = RunConfig(
    train=TrainConfig(epochs=3),
    grid=GridConfig(inputs=("/1",), seeds=2),  # the divisors come from --divisors and --max-exponent
    curvature=CurvatureConfig(every=300),
)
QUICK: flags.Overrides = {
    "grid": {"seeds": 1}, "train": {"epochs": 1}, "curvature": {"every": 16},
    "data": {"train_limit": 1024, "test_limit": 1000},
}  # fmt: skip
QUICK_DIVISORS = 5


def divisors(low_exp: float, high_exp: float, count: int) -> list[str]:
    """``count`` log-spaced divisors 10^low ... 10^high as transform names (``/1``, ``/3.16``...)."""
    return [f"/{float(f'{c:.3g}'):g}" for c in np.logspace(low_exp, high_exp, count)]


def build_parser() -> cli.Parser:
    p = common.build_parser(PROG, __doc__, QUICK, out_help=f"run directory (default runs/{PROG}-TIMESTAMP)")
    p.add_argument("--max-exponent", type=float, default=5.0, help="largest divisor 10^E (default 5)")
    p.add_argument(
        "--divisors", type=cli.positive_int, help=f"how many divisors (default 11; {QUICK_DIVISORS} with --quick)"
    )
    return p


def sweep_config(args) -> RunConfig:
    """``CONFIG`` with the command line applied and the divisor axis in place of the inputs."""
    if not math.isfinite(args.max_exponent) or args.max_exponent < 0:
        raise UsageError(f"--max-exponent {args.max_exponent} must be a finite number >= 0 (divisors from 1 to 10^E)")
    if "inputs" in flags.given(args).get("grid", {}):
        raise UsageError("--inputs: this sweep's inputs are its divisors; set --divisors and --max-exponent")
    count = args.divisors or (QUICK_DIVISORS if args.quick else 11)
    config = common.resolve(args, CONFIG, QUICK)
    return dataclasses.replace(
        config, grid=dataclasses.replace(config.grid, inputs=tuple(divisors(0.0, args.max_exponent, count)))
    )


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
    result = study.run(sweep_config(args), args.out, progress=not args.no_progress, name=PROG)
    law = scale_law(result.curvature())
    write_json(result.path / "scale_law.json", law)
    print(format_table(law))
    print(
        f"\nrun directory: {result.path} (scale_law.json" + (", report.html)" if result.config.output.report else ")")
    )
    return 0


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
