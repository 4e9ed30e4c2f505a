"""What every experiment shares: its command line (generated from the config classes), its
output folder, and its ending (its own analysis beside the study, a table, where things are).

An experiment is a small named config (or a few) plus its own analysis. Its command line is
every ``RunConfig`` field as a flag (``scalelab.flags``) applied on top of the experiment's own
configs, plus ``--config FILE``, ``--out``, ``--quick`` (the experiment's preset),
``--no-progress`` and ``--debug``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scalelab import cli, flags
from scalelab.config import RunConfig, read_config_file
from scalelab.errors import UsageError
from scalelab.results import write_json
from scalelab.schema import mean_min_max


def build_parser(prog: str, doc: str, quick: flags.Overrides, *, out_help: str) -> cli.Parser:
    p = cli.Parser(prog=f"python -m experiments.{prog}", description=doc.split("\n\n")[0])
    flags.add_config_flags(p)
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="a TOML or JSON config over the experiment's own; flags given as well override it")  # fmt: skip
    p.add_argument("--out", type=Path, help=out_help)
    p.add_argument("--quick", action="store_true", help="seconds-long run: " + flags.describe(quick))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def resolve(args, base: RunConfig, quick: flags.Overrides) -> RunConfig:
    """``base`` with, in order, ``--config FILE``, the ``quick`` preset (with --quick) and the flags."""
    if getattr(args, "config", None) is not None:
        base = read_config_file(args.config, base)
    layers = [quick] if args.quick else []
    return flags.apply(base, flags.merge(*layers, flags.given(args)))


def output_folder(args, prog: str) -> Path:
    """``--out`` (or a timestamped default), refused (before anything is trained) if it holds a run."""
    out = args.out or Path("runs") / f"{prog}-{time.strftime('%Y%m%d-%H%M%S')}"
    taken = [name for name in ("config.json", "summary.json") if (out / name).exists()]
    if taken:
        raise UsageError(f"{out} already holds {taken[0]}; choose another --out")
    return out


def finish(prog: str, result, comparison: dict[str, Any], table: str) -> None:
    """Writes the experiment's own analysis beside the study (``comparison.json``), prints its table
    and where everything is."""
    write_json(result.path / "comparison.json", {"experiment": prog, **comparison})
    print(table)
    inside = "report.html, comparison.json" if result.config.output.report else "comparison.json"
    print(f"\nrun directory: {result.path} ({inside})")


def stat(values) -> dict[str, float] | None:
    """mean/min/max of the finite values, or None when there are none."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    return mean_min_max(values[np.isfinite(values)])


def cell(s: dict[str, float] | None, fmt: str = ".3f") -> str:
    return "n/a" if s is None else f"{s['mean']:{fmt}} [{s['min']:{fmt}},{s['max']:{fmt}}]"


def say(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)
