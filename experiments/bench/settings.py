"""The benchmark's study: its constants, the flags' defaults, ``--quick``'s choices, and their checks.

Free of JAX, so that the parser and the settings exist before ``--host-devices`` sets XLA_FLAGS.
"""

from __future__ import annotations

from scalelab.errors import UsageError

PROG = "bench"
SCHEMA = "scalelab.bench/1"
FLOPS_PER_SAMPLE_PER_PARAM = 6  # forward 2N + backward 4N (Kaplan et al. 2020, eq. 2.1)
BASE_LR = 1e-3  # Keras' Adam default; a grid's variants use BASE_LR * LR_RATIO ** v
LR_RATIO = 0.8
VARIANTS_PER_SEED = 8
CURVATURE_TOL = 1e-3  # Ritz residual / |eigenvalue|
DEFAULTS = {
    "models": (1, 8, 32, 128), "batch_sizes": (32, 256), "train_limit": 4096, "test_limit": 256,
    "repeats": 2, "gemm_size": 2048, "sequential_max": 32, "curvature_models": (1, 16, 64),
    "curvature_examples": 2048, "lanczos_steps": (8, 16, 24, 32, 48, 64), "curvature_loss": "keras-ce",
    "startup_train_limit": None, "trace_matvecs": (30,), "trace_keys": 5, "numeric_axes_models": 32,
    "cost_models": (1, 4, 16, 64, 256, 1024), "cost_widths": (32, 128, 512, 2048), "cost_train_limit": 1024,
    "anchor_models": 64, "pyhessian_models": 8, "measurement_models": 64,
}  # fmt: skip
QUICK = {
    "models": (1, 8), "batch_sizes": (32,), "train_limit": 512, "test_limit": 256, "repeats": 1,
    "gemm_size": 1024, "sequential_max": 8, "curvature_models": (1, 4), "curvature_examples": 512,
    "startup_train_limit": 512, "trace_matvecs": (12,), "trace_keys": 3, "numeric_axes_models": 16,
    "cost_models": (1, 4), "cost_widths": (32, 128), "cost_train_limit": 512,
    "anchor_models": 8, "pyhessian_models": 2, "measurement_models": 0,
}  # fmt: skip


def resolve_settings(args) -> dict:
    """DEFAULTS, overridden by --quick's choices, overridden by every flag given explicitly."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    return {**DEFAULTS, **(QUICK if args.quick else {}), **given}


def validate(settings: dict, dataset) -> None:
    """UsageError for a limit the dataset cannot meet."""
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
