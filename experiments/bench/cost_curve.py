"""The cost curve: throughput and memory from 1 to 1024 models, and from 32 to 2048 hidden units.

Each point is the benched grid (``grids.run_config``: 784-H-10 relu, Adam, inputs /255) planned,
placed and compiled as ``scale_grid`` would, all points timed interleaved (``grids.time_grids``) so
their ratios come from the same stretch of time. Memory is XLA's own account of the compiled epoch
(``memory_analysis``: arguments + outputs + temporaries - aliased), beside the planner's estimate
(``grid.estimate_bytes_per_model``) that decides the chunks. Where the rate (GFLOP/s of all models
together) bends, the row says how the state the models step together compares with the CPU's caches
(sysfs), the usual cause.

The chunking check trains one small study twice, once with the chunks a forced small memory budget
gives: the metrics must agree to the grid's float32 tolerance (and are byte-identical on one device).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from experiments.bench.grids import grid_layout, prepare_grid, run_config, time_grids
from experiments.bench.timing import say
from experiments.bench.training import throughput
from scalelab import grid as grid_lib

MODELS = (1, 4, 16, 64, 256, 1024)
WIDTHS = (32, 128, 512, 2048)
WIDTH_MODELS = 8  # models per point of the width curve
CHUNK_MODELS = 3
CHUNKING_RTOL = 2e-4  # tests/test_grid.py's GRID_RTOL
BEND = 0.85  # a point whose per-model rate falls below 85% of the previous point's marks a bend


def cost_curve_bench(settings: dict, dataset, peak: float) -> dict:
    """The M curve at batch 32 and 256, the H curve at batch 32, and the chunking check."""
    settings = {**settings, "train_limit": settings["cost_train_limit"]}
    points = [(m, b, 128) for b in (32, 256) for m in settings["cost_models"]]
    points += [(WIDTH_MODELS, 32, h) for h in settings["cost_widths"]]
    say(f"cost curve: compiling {len(points)} grids (M up to {max(settings['cost_models'])}, H up to "
        f"{max(settings['cost_widths'])})")  # fmt: skip
    prepared = [_prepared(settings, dataset, *p) for p in points]
    say("cost curve: timing them interleaved")
    timings = time_grids([g for g, _ in prepared], settings["repeats"])
    num_train = min(settings["train_limit"], len(dataset.train_images))
    rows = [_row(p, g, t, mem, num_train, peak) for p, (g, mem), t in zip(points, prepared, timings, strict=True)]
    caches, n = cpu_caches(), len(settings["cost_models"])
    return {
        "train_examples": num_train,
        "caches_bytes": caches,
        "models": _bends(rows[:n], caches) + _bends(rows[n : 2 * n], caches),  # batch 32, then 256
        "widths": _bends(rows[2 * n :], caches),
        "chunking": chunking_check(dataset),
    }


def _prepared(settings: dict, dataset, num_models: int, batch_size: int, hidden: int):
    seeds, lrs = grid_layout(num_models)
    config = run_config(settings, batch_size, seeds, lrs)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, hidden=(hidden,)))
    g = prepare_grid(config, dataset, [(range(seeds), lrs)], settings["models_per_block"])
    m = g.compiled.memory_analysis()  # type: ignore[attr-defined]
    xla_bytes = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    estimate = num_models * grid_lib.estimate_bytes_per_model(g.num_params, (hidden,), batch_size, 1000)
    return g, {"xla_bytes": int(xla_bytes), "planner_estimate_bytes": int(estimate)}


def _row(point, g, timing, memory: dict, num_train: int, peak: float) -> dict:
    num_models, batch_size, hidden = point
    rate = throughput(num_models, num_train, timing.call_s[0], g.num_params, peak)
    per_model = 4 * g.num_params * 4  # params, grads, two moments (float32)
    return {"models": num_models, "batch_size": batch_size, "hidden": hidden, "num_params": g.num_params,
            "models_per_block": g.models_per_block, "block_state_bytes": g.models_per_block * per_model,
            "state_bytes": num_models * per_model // g.devices, **memory, **rate,
            "samples_per_s_per_model": rate["samples_per_s"] / num_models}  # fmt: skip


def _bends(rows: list[dict], caches: dict) -> list[dict]:
    """Marks each row whose training GFLOP/s (all its models together) fell below BEND of the last point's.

    More models or wider layers give the matmuls more work per step; once the cores are busy the
    rate should hold flat, so a fall marks a bend, explained by the cache level its state crossed.
    """
    for previous, row in zip(rows, rows[1:], strict=False):
        row["rate_vs_previous"] = row["gflops"] / previous["gflops"]
        if row["rate_vs_previous"] < BEND:
            row["bend"] = _why(previous, row, caches)
    return rows


def _why(previous: dict, row: dict, caches: dict) -> str:
    """The cache level that the models stepped together (a block), or the whole grid, newly outgrew."""
    for what, key in (
        ("a block of models steps together", "block_state_bytes"),
        ("each device's models hold", "state_bytes"),
    ):
        for level in ("L2", "L3"):
            size = caches.get(level)
            if size and previous[key] <= size < row[key]:
                return f"the {row[key] / 2**20:.1f} MiB {what} outgrew the {level} ({size / 2**20:.0f} MiB)"
    return "no cache level newly outgrown since the previous point: memory bandwidth, or this shared machine's noise"


def cpu_caches() -> dict:
    """{level: bytes} of CPU 0's data/unified caches, from sysfs (empty where it is not readable)."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind, level, size = ((index / n).read_text().strip() for n in ("type", "level", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            out[f"L{level}"] = int(size.rstrip("K")) * 1024 if size.endswith("K") else int(size)
    return out


def chunking_check(dataset) -> dict:
    """One small study trained whole and in the chunks of a budget that fits 3 models: same metrics?"""
    from scalelab import study  # a run directory each, as a user's
    from scalelab.config import CurvatureConfig, DataConfig, EngineConfig, GridConfig, OutputConfig, RunConfig
    from scalelab.models import count_params, make_model

    config = RunConfig(
        data=DataConfig(train_limit=1024, test_limit=256), grid=GridConfig(inputs=("/1", "/255"), seeds=4),
        curvature=CurvatureConfig(enabled=False), output=OutputConfig(report=False, save_params=False),
    )  # fmt: skip
    num_params = count_params(make_model((128,), 10, "relu", "glorot-uniform"), 784)
    per_model = grid_lib.estimate_bytes_per_model(num_params, (128,), 32, 1000)
    budget = CHUNK_MODELS * per_model  # a memory budget that fits 3 of the 8 models: 3 chunks
    chunked = dataclasses.replace(config, engine=EngineConfig(max_models_per_chunk=budget // per_model))
    say(f"cost curve: chunking check, {config.num_models} models whole and in chunks of {CHUNK_MODELS}")
    with tempfile.TemporaryDirectory() as tmp:
        whole = study.run(config, Path(tmp) / "whole", progress=False, dataset=dataset)
        parts = study.run(chunked, Path(tmp) / "chunked", progress=False, dataset=dataset)
        same = (whole.path / "metrics.csv").read_bytes() == (parts.path / "metrics.csv").read_bytes()
        worst = max(_relative_difference(a, b) for a, b in zip(whole.metrics(), parts.metrics(), strict=True))
    # Chunks change how many models share a device's matmuls, hence float32 rounding (the library's
    # guarantee, tested: rtol 2e-4, tests/test_grid.py); bit-identity holds where the layout is the same.
    return {"models": config.num_models, "budget_bytes": budget, "models_per_chunk": CHUNK_MODELS,
            "chunks": -(-config.num_models // CHUNK_MODELS), "bit_identical": same,
            "max_relative_difference": worst, "identical_metrics": worst <= CHUNKING_RTOL}  # fmt: skip


def _relative_difference(a: dict, b: dict) -> float:
    keys = ("train_loss", "test_loss", "test_acc", "grad_norm")
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in keys)
