"""The clock every figure shares: best-of-N wall time, and progress lines with the seconds since start."""

from __future__ import annotations

import math
import sys
import time

from experiments.bench.settings import PROG

STARTED = time.perf_counter()


def say(message: str) -> None:
    """A progress line on stderr, with the seconds since the program started."""
    print(f"{PROG}: [{time.perf_counter() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn`` (which must block until its result is ready)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best(runs: dict, repeats: int) -> dict:
    """``{name: seconds}``: each of ``runs`` (blocking callables) called once untimed (it compiles,
    and a first run pays one-off set-up), then round-robin ``repeats`` times, the best kept, so a
    burst of load from elsewhere hits every figure alike."""
    for run in runs.values():
        run()
    best = {name: math.inf for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], best_time(run, 1))
    return best
