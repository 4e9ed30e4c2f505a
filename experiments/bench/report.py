"""The report: the JSON document (schema ``scalelab.bench/1``), its headline, and the printed tables.

Top-level keys, in order: ``schema``, ``command``, ``flags``, ``environment``, ``gemm``,
``gemm_peak_gflops``, ``training``, ``keras``, ``curvature`` (null with ``--no-curvature``),
``trace_estimators`` (null with ``--no-traces``), ``startup`` (null with ``--no-startup``),
``numeric_axes`` (null with ``--no-numeric-axes``), ``cost_curve`` (null without ``--cost-curve``),
``anchors`` (``pyhessian``: ``available`` false without ``--pyhessian`` or torch),
``headline``, ``wall_s``. ``start`` fills the first three, ``finish`` the last two.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from experiments.bench.settings import PROG, SCHEMA


def start(argv, settings: dict, args) -> dict:
    """The report's schema, command line and every setting it ran with."""
    report = {"schema": SCHEMA, "command": ["python", "-m", f"experiments.{PROG}", *argv]}
    report["flags"] = {**settings, "curvature": args.curvature, "traces": args.traces, "startup": args.startup,
                       "numeric_axes": args.numeric_axes, "cost_curve": args.cost_curve, "pyhessian": args.pyhessian,
                       "keras": args.keras, "quick": args.quick, "host_devices": args.host_devices,
                       "data": args.data or "fashion_mnist"}  # fmt: skip
    return report


def finish(report: dict, started: float) -> dict:
    """Adds the headline, the load average at the end and the wall time since ``started`` (perf_counter)."""
    report["headline"] = headline(report)
    report["environment"]["load_average_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - started
    return report


def write_json(path: Path, report: dict) -> None:
    from scalelab.results import write_json  # atomic: temp file, fsync, rename

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)


def headline(report: dict) -> dict:
    """The peak, the best vmapped rate, and every vmapped-over-sequential ratio, keyed M{m}_b{batch} / M{m}."""
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
        "curvature_blocked_over_sequential": None
        if report["curvature"] is None
        else {f"M{r['models']}": r["blocked_over_sequential"] for r in report["curvature"]["results"]},
        "run_measurement_blocked_over_vmapped": None
        if report["curvature"] is None
        else (report["curvature"]["run_measurement"] or {}).get("blocked_over_vmapped"),
        "startup_warm_over_cold": None if report["startup"] is None else report["startup"]["warm_over_cold"],
        "numeric_axes_throughput_ratio": None if report["numeric_axes"] is None
        else report["numeric_axes"]["throughput_ratio"],
        "pyhessian_speedup": report["anchors"]["pyhessian"].get("speedup"),
    }  # fmt: skip


def format_report(report: dict) -> str:
    """The printed summary: machine and ceiling, the training table, Keras, the curvature table."""
    env = report["environment"]
    lines = [
        f"{env['platform']} ({env['device_kind']}, {env['device_count']} device(s), {env['cpu_count']} CPUs), "
        f"jax {env['jax']}; load average {env['load_average_start'][0]:.1f} -> {env['load_average_end'][0]:.1f}",
        f"GEMM float32 {report['gemm']['size']}^2: {report['gemm_peak_gflops']:.1f} GFLOP/s (the ceiling; "
        f"{_gemm_detail(report['gemm'])})",
        "",
        *_training_lines(report["training"]),
        "",
        _keras_line(report["keras"]),
    ]
    if report["curvature"] is not None:
        lines += ["", *_curvature_lines(report["curvature"])]
    if report["trace_estimators"] is not None:
        lines += ["", *_trace_lines(report["trace_estimators"])]
    if report["startup"] is not None:
        lines += ["", *_startup_lines(report["startup"])]
    lines += [*_numeric_axes_lines(report["numeric_axes"]), *_cost_curve_lines(report["cost_curve"])]
    lines += _anchor_lines(report["anchors"]["pyhessian"])
    return "\n".join(lines)


def _numeric_axes_lines(result: dict | None) -> list[str]:
    if not result:
        return []
    verdict = "meets" if result["meets_target"] else "misses"
    return ["", f"numeric axes ({result['models']} models, batch {result['batch_size']}): "
            f"{result['every_axis']['variants']} at {result['throughput_ratio']:.3f}x the model-samples/s of "
            f"{result['lr_only']['variants']} ({verdict} the {result['target']} target)"]  # fmt: skip


def _cost_curve_lines(curve: dict | None) -> list[str]:
    if not curve:
        return []
    lines = ["", f"cost curve ({curve['train_examples']} examples an epoch; memory: XLA's account of the epoch):"]
    for row in curve["models"] + curve["widths"]:
        bend = f"  <- {row['bend']}" if "bend" in row else ""
        point = f"  M={row['models']:>4} batch {row['batch_size']:>3} H={row['hidden']:>4}"
        lines.append(f"{point}: {row['gflops']:7.1f} GFLOP/s ({row['frac_of_peak']:.0%} of peak), "
                     f"{row['xla_bytes'] / 2**20:,.0f} MiB{bend}")  # fmt: skip
    chunking = curve["chunking"]
    same = "byte-identical" if chunking["bit_identical"] else f"within {chunking['max_relative_difference']:.1e}"
    verdict = "" if chunking["identical_metrics"] else " (beyond the grid's 2e-4: a bug)"
    lines.append(
        f"  chunking: {chunking['models']} models whole and in {chunking['chunks']} chunks: metrics {same}{verdict}"
    )
    return lines


def _anchor_lines(anchor: dict) -> list[str]:
    if not anchor.get("available"):
        return ["", f"PyHessian anchor: {anchor['why']}"]
    top, trace = anchor, anchor["trace"]
    ours, theirs = anchor["models"], anchor["pyhessian_models"]
    return ["", f"PyHessian anchor ({ours} models, as a run measures them; PyHessian on {theirs}): "
            f"top eigenvalue {top['speedup']:.1f}x faster per model at {top['lanczos_steps']} Lanczos steps "
            f"(median/worst error {top['scalelab_rel_error']:.1e}/{top['scalelab_max_rel_error']:.1e} vs PyHessian's "
            f"{top['pyhessian_rel_error']:.1e}/{top['pyhessian_max_rel_error']:.1e}); "
            f"{anchor['at_default_accuracy']['speedup']:.1f}x at the default 16 steps; trace "
            f"{trace['speedup']:.1f}x at {trace['scalelab_probes']} probes (median/worst error "
            f"{trace['scalelab_rel_error']:.1%}/{trace['scalelab_max_rel_error']:.1%} vs "
            f"{trace['pyhessian_rel_error']:.1%}/{trace['pyhessian_max_rel_error']:.1%})"]  # fmt: skip


def _training_lines(train: dict) -> list[str]:
    lines = [
        f"training: {train['model']}; {train['train_examples']} train examples per epoch, plus evaluation of "
        f"{train['test_examples_evaluated']} test examples inside the timed epoch; "
        f"GFLOP/s at {train['flops_per_sample']}; the step's matmuls do {train['matmul_flops_per_sample']:,} "
        f"FLOPs per sample, so 6N is {train['six_n_over_matmul_flops']:.2f}x the real arithmetic",
    ]
    header = (f"{'batch':>5} {'M':>4} {'SxV':>6} {'dev':>3} {'blk':>3} | {'vmapped samples/s':>17} {'GFLOP/s':>8} "
              f"{'peak':>5} {'step':>5} | {'sequential samples/s':>20} {'GFLOP/s':>8} {'peak':>5} | "
              f"{'vmap/seq':>8}")  # fmt: skip
    lines += [header, "-" * len(header), *map(_training_row_line, train["results"])]
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
    return lines


def _training_row_line(r: dict) -> str:
    vm, sq = r["vmapped"], r["sequential"]
    scaled = "*" if sq["timed_models"] < r["models"] else " "
    return (
        f"{r['batch_size']:>5} {r['models']:>4} {r['seeds']:>3}x{len(r['lrs']):<2} {vm['devices']:>3} "
        f"{vm['models_per_block']:>3} | "
        f"{vm['samples_per_s']:>17,.0f} {vm['gflops']:>8.1f} {vm['frac_of_peak']:>5.0%} "
        f"{vm['frac_of_step_ceiling']:>5.0%} | {sq['samples_per_s']:>19,.0f}{scaled} "
        f"{sq['gflops']:>8.1f} {sq['frac_of_peak']:>5.0%} | {r['vmapped_over_sequential']:>8.2f}"
    )


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
    header = (f"{'M':>4} | {'vmapped s':>9} {'GFLOP/s':>8} {'peak':>5} | {'blk':>3} {'blocked s':>9} {'GFLOP/s':>8} "
              f"{'peak':>5} | {'one-at-a-time s':>15} {'GFLOP/s':>8} {'peak':>5} | {'vmap/seq':>8} {'blk/seq':>7} | "
              f"{'compile s':>9}")  # fmt: skip
    lines += [header, "-" * len(header)]
    for r in curv["results"]:
        lines.append(
            f"{r['models']:>4} | {r['vmapped_s']:>9.3f} {r['vmapped_gflops']:>8.1f} "
            f"{r['vmapped_frac_of_peak']:>5.0%} | {r['models_per_block']:>3} {r['blocked_s']:>9.3f} "
            f"{r['blocked_gflops']:>8.1f} "
            f"{r['blocked_frac_of_peak']:>5.0%} | {r['sequential_s']:>15.3f} {r['sequential_gflops']:>8.1f} "
            f"{r['sequential_frac_of_peak']:>5.0%} | {r['vmapped_over_sequential']:>8.2f} "
            f"{r['blocked_over_sequential']:>7.2f} | {r['compile_s']:>9.1f}"
        )
    lines.append(f"GFLOP/s: {curv['hvps_per_model']} HVPs per model at {curv['lanczos_hvp_flops_per_sample']:,} matmul "
                 "FLOPs per example (the tangent work; XLA hoists the forward pass out of the loop; "
                 "reorthogonalisation not counted)")  # fmt: skip
    alone = ", ".join(
        f"{r['models']} models {r['products_vmapped_over_sequential']:.2f}x "
        f"({r['products_sequential_frac_of_peak']:.0%})"
        for r in curv["results"]
    )
    lines.append(
        f"the same HVPs alone, no Krylov basis (vmapped over one at a time; one at a time of the peak): {alone}"
    )
    run = curv.get("run_measurement")
    if run:
        lines.append(
            f"a run's measurement ({run['models']} models, {run['examples']} examples, {run['lanczos_steps']} Lanczos "
            f"steps): vmapped {run['vmapped_s']:.2f} s, in blocks of {run['models_per_block'] or run['models']} "
            f"{run['blocked_s']:.2f} s ({run['blocked_over_vmapped']:.2f}x; top eigenvalues within "
            f"{run['top_eig_max_rel_diff']:.1e})"
        )
    return lines


def _startup_lines(up: dict) -> list[str]:
    cold, warm = up["cold"], up["warm"]
    return [
        f"start-up: the default study ({up['models']} models, {up['train_examples'] or 'all'} train examples, "
        f"2 epochs) in a fresh process, compilation cache empty (cold) then full (warm, {up['cache_entries']} entries)",
        f"first epoch: cold {cold['first_epoch_s']:.1f} s, warm {warm['first_epoch_s']:.1f} s "
        f"(warm/cold {up['warm_over_cold']:.2f}, target <= {up['target_warm_over_cold']:g}); later epoch "
        f"{cold['later_epoch_s']:.1f} / {warm['later_epoch_s']:.1f} s",
        f"process start to first training step: cold {cold['start_to_first_step_s']:.1f} s, warm "
        f"{warm['start_to_first_step_s']:.1f} s (target < {up['target_warm_start_s']:g} s)",
    ]


def _trace_lines(tr: dict) -> list[str]:
    lines = [
        f"trace estimators: Hessian trace of the curvature problem ({tr['num_params']:,} parameters, "
        f"{tr['examples']} examples), exact {tr['exact_trace']:.6g} ({tr['exact_method']}); {tr['keys']} keys each",
    ]
    header = (f"{'estimator':>10} {'matvecs':>7} | {'rel error':>9} {'rel stderr':>10} | {'RMS rel error':>13} "
              f"{'RMS rel stderr':>14} {'within 2 se':>11}")  # fmt: skip
    lines += [header, "-" * len(header)]
    for r in tr["results"]:
        lines.append(
            f"{r['name']:>10} {r['matvecs']:>7} | {r['rel_error']:>9.2e} {r['rel_stderr']:>10.2e} | "
            f"{r['rms_rel_error']:>13.2e} {r['rms_rel_stderr']:>14.2e} {r['within_2_stderr']:>11.0%}"
        )
    return lines
