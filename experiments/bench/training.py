"""Training throughput: each M-model grid as one vmapped program against its models one at a time.

Per batch size, every program (the single-model epoch that gives the sequential figures, each
M-model grid, and with ``--compare-one-device`` the spread grids again on one device) is compiled
first and then timed interleaved (``grids.time_grids``); the bare step's rate at the same shapes
(``step_ceiling``) follows. Figures count ``6 * num_params`` FLOPs per sample; the step's real
matmul FLOPs are reported beside them (``matmul_flops_per_sample``).
"""

from __future__ import annotations

import functools
import math
import statistics

from experiments.bench.grids import (
    MIN_TIMED_S,
    GridTiming,
    grid_layout,
    grid_models,
    prepare_grid,
    run_config,
    time_grids,
)
from experiments.bench.settings import BASE_LR, FLOPS_PER_SAMPLE_PER_PARAM
from experiments.bench.step_ceiling import step_ceiling
from experiments.bench.timing import say


def training_bench(settings: dict, dataset, peak: float) -> dict:
    """Per batch size: the models one at a time, then each M-model grid as one vmapped program."""
    input_dim = math.prod(dataset.train_images.shape[1:])
    (hidden,) = run_config(settings, 32, 1, (BASE_LR,)).model.hidden  # the benched MLP's one layer
    widths = (input_dim, hidden, dataset.num_classes)
    results, ceilings = [], {}
    for batch_size in settings["batch_sizes"]:
        rows = batch_size_rows(settings, dataset, batch_size, peak)
        ceilings[str(batch_size)] = ceiling_figures(settings, rows, batch_size, widths, peak)
        results += rows
    num_params, matmul_flops = results[0]["num_params"], matmul_flops_per_sample(widths)
    return {
        "model": "MLP 784-128-10 relu, keras-ce, adam (lr 1e-3 * 0.8**v), inputs /255",
        "num_params": num_params,
        "flops_per_sample": f"{FLOPS_PER_SAMPLE_PER_PARAM} x num_params (forward 2N + backward 4N)",
        "matmul_flops_per_sample": matmul_flops,
        "six_n_over_matmul_flops": FLOPS_PER_SAMPLE_PER_PARAM * num_params / matmul_flops,
        "train_examples": min(settings["train_limit"], len(dataset.train_images)),
        "test_examples_evaluated": settings["test_limit"],
        "evaluation_included": True,
        "timing": "one epoch = scan over minibatches + test evaluation, compiled ahead of time, one untimed "
        "warm-up run; all programs of a batch size timed interleaved (round-robin), each figure the best of "
        f"{settings['repeats']} or more epochs (>= {MIN_TIMED_S} s timed); evaluation FLOPs not counted",
        "step_ceiling": ceilings,
        "results": results,
    }


def batch_size_rows(settings: dict, dataset, batch_size: int, peak: float) -> list[dict]:
    """Every M's row at one batch size, from programs compiled first and then timed interleaved."""
    limit = settings["sequential_max"]
    needed = list(dict.fromkeys(model for m in settings["models"] for model in grid_models(m)[:limit]))
    say(f"training: batch {batch_size}: compiling one single-model epoch ({len(needed)} models one after "
        f"another) and the {', '.join(map(str, settings['models']))}-model grids")  # fmt: skip
    single = prepare_grid(run_config(settings, batch_size, 1, (BASE_LR,)), dataset, [((s,), (lr,)) for s, lr in needed])

    def grid(layout, one_device=False):
        seeds, lrs = layout
        config = run_config(settings, batch_size, seeds, lrs)
        return prepare_grid(config, dataset, [(range(seeds), lrs)], settings["models_per_block"], one_device)

    layouts = [grid_layout(m) for m in settings["models"]]
    grids = [grid(layout) for layout in layouts]
    # The same grids on the first device alone, for those spread over several.
    spread = [i for i, g in enumerate(grids) if g.devices > 1] if settings["compare_one_device"] else []
    alone = [grid(layouts[i], one_device=True) for i in spread]
    say(f"training: batch {batch_size}: timing all of them, interleaved")
    sequential, *timings = time_grids([single, *grids, *alone], settings["repeats"])
    vmapped, one_device = timings[: len(grids)], dict(zip(spread, timings[len(grids) :], strict=True))
    per_model_s = dict(zip(needed, sequential.call_s, strict=True))
    return [
        training_row(settings, dataset, batch_size, m, vm, sequential, per_model_s, peak, one_device.get(i))
        for i, (m, vm) in enumerate(zip(settings["models"], vmapped, strict=True))
    ]


def ceiling_figures(settings: dict, rows: list[dict], batch_size: int, widths: tuple[int, int, int], peak: float):
    """The bare step's rate for the largest grid's block of models on its devices; adds each row's
    ``frac_of_step_ceiling``."""
    block, devices = rows[-1]["vmapped"]["models_per_block"], rows[-1]["vmapped"]["devices"]
    say(f"step ceiling: batch {batch_size}, {block} models on each of {devices} device(s), matmuls + SGD only")
    ceiling = step_ceiling(batch_size, block, devices, widths, rows[-1]["num_params"], settings["repeats"])
    for row in rows:
        for kind in ("vmapped", "sequential"):
            row[kind]["frac_of_step_ceiling"] = row[kind]["gflops"] / ceiling
    return {"models": block, "devices": devices, "gflops": ceiling, "frac_of_peak": ceiling / peak}


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


def throughput(num_models: int, num_train: int, seconds: float, num_params: int, peak: float) -> dict:
    """One epoch's figures: seconds, samples/s, GFLOP/s at 6N per sample, and its fraction of the peak."""
    samples_per_s = num_models * num_train / seconds
    gflops = FLOPS_PER_SAMPLE_PER_PARAM * num_params * samples_per_s / 1e9
    return {"epoch_s": seconds, "samples_per_s": samples_per_s, "gflops": gflops, "frac_of_peak": gflops / peak}


def matmul_flops_per_sample(widths: tuple[int, ...]) -> int:
    """The matmul FLOPs of one sample's training step for an MLP of these layer widths: forward
    and weight gradients for every layer, input gradients for every layer but the first."""
    products = [a * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return 2 * sum(products) + 2 * sum(products) + 2 * sum(products[1:])
