"""Input scale as a reparametrisation, measured: scaling the inputs by c is the same as scaling
the first layer's initial weights by c and its learning rate by c**2 (SGD) or c (Adam).

    python -m experiments.lr_equivalence --quick              # seconds
    python -m experiments.lr_equivalence --steps 500 --out runs/lr-eq
    python -m experiments.lr_equivalence --quick --x64        # SGD agrees to ~1e-12

Two models, trained from the same initial weights on the same minibatches:

* **A** sees ``c * x`` with first-layer kernel ``W`` (the scaled inputs);
* **B** sees ``x`` with first-layer kernel ``W' = c * W`` (the base inputs).

They compute the same function, since ``(c x) W = x (c W)``, and their gradients obey
``dL/dW = c * dL/dW'``. Every other parameter (the first bias included) sees identical gradients.

* **SGD**: ``c (W - lr g_A) = W' - (c**2 lr) g_B``, so B with the first kernel's learning rate
  multiplied by ``c**2`` (all else unchanged) follows A exactly: ``W'_B = c W_A`` at every step.
* **Adam** (Kingma & Ba 2015, Alg. 1, optax's form ``m_hat / (sqrt(v_hat) + eps)``): A's moments
  of the first kernel are ``m_A = c m_B`` and ``v_A = c**2 v_B``, so A's step is
  ``m_B / (sqrt(v_B_hat) + eps / c)``, and ``c`` times it is B's step with learning rate ``c lr``
  *and epsilon ``eps / c``* -- exact. With B's *same* ``eps`` the two differ wherever
  ``sqrt(v_B_hat)`` is not large against both ``eps`` and ``eps / c``: that is where Adam's scale
  invariance breaks, and ``eps_sensitive_frac`` measures how many first-layer weights are there
  (the share whose same-eps step differs from the exact one by more than 1%).

The base inputs ``x`` are ``--base`` (default ``/255``, pixels in [0, 1]), so with the default
scales A sees: ``c = 255`` raw pixels (the posts' failing ``/1``), ``c = 0.255`` pixels/1000 (the
second post's ``/1000``), ``c = 1/255`` pixels/65025 (eps-dominated). Read the other way, for
Adam: training on raw pixels *is* training on [0, 1] pixels with a 255x larger first-layer
initialisation and a 255x larger first-layer learning rate (0.255 instead of 1e-3); for SGD the
learning rate factor is 65025. ``--base /1`` makes raw pixels the base and ``c = 1/255`` the
``/255`` transform.

In real arithmetic the exact variants agree perfectly; what is measured is float rounding (A
multiplies ``c * x`` first, B multiplies ``c * W``), carried along by training: ~1e-7 in float32
and ~1e-16 in float64 (``--x64``) for ``c = 0.255`` and ``1/255`` over hundreds of steps. Raw
pixels (``c = 255``) are different: training there is chaotic, and the rounding gap grows
exponentially (measured on Fashion-MNIST: e-folding every ~6-9 steps for Adam, and for SGD on one
of two seeds) in float32 and float64 alike -- float64 only starts it ~1e-9 lower -- until it is
as large as the same-eps gap after a few hundred steps. So read the exact variants at the early
steps (``rel_param_diff_at_step``: 1, 10, 100, ...) and against the same-eps gap at the same step:
at step 1 the same eps is already 1e-4..1e-3 off, the exact variants at rounding level.

Writes ``--out DIR``: ``config.json``; ``trajectories.csv``, one row per (optimizer, variant, c,
seed, step) with A's and B's minibatch loss before the step (``loss_a``, ``loss_b``, and their
relative gap ``rel_loss_diff``) and, after it, the relative parameter distance ``rel_param_diff``
= ``||T(theta_A) - theta_B|| / ||theta_B||`` (``T`` multiplies A's first kernel by c) and, for
Adam, ``eps_sensitive_frac`` (computed on A's trajectory, so equal for both Adam variants; ``nan``
for SGD); ``summary.json``, per optimizer, variant and c: the maxima over seeds and steps, the
distance at steps 1, 10, 100, ..., the first step over the tolerance, and non-finite counts.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalelab import cli
from scalelab.data import load_dataset
from scalelab.errors import ScalelabError, UsageError
from scalelab.losses import get_loss
from scalelab.models import make_model
from scalelab.optim import OptimizerConfig, make_direction
from scalelab.results import atomic_write_text, write_json
from scalelab.transforms import apply_affine, fit_affine, parse_transform

PROG = "lr_equivalence"
QUICK = {"train_limit": 2048, "steps": 200, "seeds": 2}
DEFAULTS = {"train_limit": None, "steps": 1000, "seeds": 3, "scales": "255,0.255,1/255", "base": "/255"}
# What "coincide" means for the exact variants: the largest relative parameter distance we
# claim, per dtype. Non-chaotic runs stay far below it; at c = 255 chaos outgrows it (docstring).
TOLERANCE = {"float32": 1e-3, "float64": 1e-9}
# A same-eps Adam step counts as eps-sensitive when it differs from the exact step by over 1%.
EPS_SENSITIVE_RATIO = 0.01
TRAJECTORY_COLUMNS = (
    "optimizer", "variant", "c", "seed", "step", "loss_a", "loss_b", "rel_param_diff", "rel_loss_diff",
    "eps_sensitive_frac",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Variant:
    """How model B is set up against A: first-kernel lr factor ``c**lr_power``, eps or eps/c."""

    optimizer: str
    name: str
    lr_power: int
    eps_over_c: bool
    exact: bool

    @property
    def key(self) -> str:
        return f"{self.optimizer}-{self.name}"

    def describe(self) -> str:
        lr = {2: "c^2 lr", 1: "c lr"}[self.lr_power]
        eps = "" if self.optimizer == "sgd" else (", eps/c" if self.eps_over_c else ", same eps")
        return f"first kernel: init c W, {lr}{eps}"


VARIANTS = (
    Variant("sgd", "exact", lr_power=2, eps_over_c=False, exact=True),
    Variant("adam", "exact", lr_power=1, eps_over_c=True, exact=True),
    Variant("adam", "same-eps", lr_power=1, eps_over_c=False, exact=False),
)


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", help="comma-separated c > 0; a fraction like 1/255 is allowed "
                   f"(default {DEFAULTS['scales']})")  # fmt: skip
    p.add_argument("--base", help=f"input transform that gives x, e.g. /255 or /1 (default {DEFAULTS['base']})")
    p.add_argument("--variants", help="comma-separated subset of " + ", ".join(v.key for v in VARIANTS)
                   + " (default all)")  # fmt: skip
    p.add_argument("--steps", type=cli.positive_int, help=f"optimiser steps (default {DEFAULTS['steps']})")
    p.add_argument("--seeds", type=cli.positive_int, help=f"number of seeds, 0..N-1 (default {DEFAULTS['seeds']})")
    p.add_argument("--train-limit", type=cli.positive_int, help="use the first N training examples (default all)")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="minibatch size (default 32)")
    p.add_argument("--hidden", type=cli.int_list, default=(128,), help="hidden widths (default 128)")
    p.add_argument("--activation", default="relu", help="relu (default), sigmoid, tanh, gelu, identity")
    p.add_argument("--loss", default="ce", help="ce (default, exact), keras-ce, mse")
    p.add_argument("--sgd-lr", type=cli.positive_float, default=1e-2, help="SGD learning rate (default 1e-2)")
    p.add_argument("--adam-lr", type=cli.positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--eps", type=cli.positive_float, default=1e-7, help="Adam epsilon (default 1e-7, Keras)")
    p.add_argument("--x64", action="store_true", help="compute in float64 (shows the deviations are rounding)")
    cli.add_data_flags(p)
    p.add_argument("--out", type=Path, help=f"run directory to create (default runs/{PROG}-TIMESTAMP)")
    p.add_argument("--quick", action="store_true", help="seconds-long run: "
                   + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()))  # fmt: skip
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def parse_scale(text: str) -> float:
    """``255``, ``0.255`` or ``1/255`` -> a finite number > 0."""
    try:
        num, _, den = text.strip().partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--scales entry {text!r} is not a number or fraction, e.g. 255 or 1/255") from None
    if not (0 < value < math.inf):
        raise UsageError(f"--scales entry {text!r} must be a finite number > 0 (negative c would flip signs)")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    variants: tuple[str, ...]
    scales: tuple[float, ...]
    scale_labels: tuple[str, ...]
    base: str
    steps: int
    seeds: int
    train_limit: int | None
    batch_size: int
    hidden: tuple[int, ...]
    activation: str
    loss: str
    sgd_lr: float
    adam_lr: float
    eps: float
    dtype: str
    data: str
    data_dir: str | None


def settings_from_args(args) -> Settings:
    def pick(key):
        """The flag's value if given, else --quick's, else the default."""
        if getattr(args, key) is not None:
            return getattr(args, key)
        return QUICK[key] if args.quick and key in QUICK else DEFAULTS[key]

    labels, scales = parse_scales(pick("scales"))
    return Settings(
        variants=parse_variants(args.variants), scales=scales, scale_labels=labels, base=pick("base"),
        steps=pick("steps"), seeds=pick("seeds"), train_limit=pick("train_limit"), batch_size=args.batch_size,
        hidden=tuple(args.hidden), activation=args.activation, loss=args.loss, sgd_lr=args.sgd_lr,
        adam_lr=args.adam_lr, eps=args.eps, dtype="float64" if args.x64 else "float32",
        data=args.data or "fashion_mnist", data_dir=None if args.data_dir is None else str(args.data_dir),
    )  # fmt: skip


def parse_scales(text: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``--scales``: the entries as written (for tables) and their values."""
    labels = tuple(part.strip() for part in text.split(","))
    values = tuple(parse_scale(label) for label in labels)
    if len(set(values)) != len(values):
        raise UsageError(f"--scales {text!r} lists a value twice; list each once")
    return labels, values


def parse_variants(text: str | None) -> tuple[str, ...]:
    """``--variants``: a subset of the variants' keys, all of them if not given."""
    known = [v.key for v in VARIANTS]
    if text is None:
        return tuple(known)
    chosen = tuple(part.strip() for part in text.split(","))
    if any(v not in known for v in chosen) or len(set(chosen)) != len(chosen):
        raise UsageError(f"--variants {text!r}: list each of {', '.join(known)} at most once")
    return chosen


def chosen_variants(settings: Settings) -> list[Variant]:
    return [v for v in VARIANTS if v.key in settings.variants]


# --- the numerical core: one (A, B) pair trained side by side -----------------------------------


def _is_first_kernel(path) -> bool:
    return tuple(getattr(k, "key", k) for k in path) == ("params", "Dense_0", "kernel")


def first_kernel_map(first, rest, *trees):
    """``tree_map`` that applies ``first`` to the Dense_0 kernel leaf and ``rest`` to the others."""
    return jax.tree_util.tree_map_with_path(
        lambda path, *leaves: first(*leaves) if _is_first_kernel(path) else rest(*leaves), *trees
    )


class StepRecord(NamedTuple):
    loss_a: Any
    loss_b: Any
    rel_param_diff: Any
    eps_sensitive_frac: Any


def relative_distance(a, b):
    """``||a - b|| / ||b||`` over all leaves of two pytrees of the same structure."""
    num = sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    den = sum(jnp.sum(jnp.square(y)) for y in jax.tree.leaves(b))
    return jnp.sqrt(num / den)


def directions(optimizer: str, eps: float, b_eps):
    """A's and B's optax transformations (updates per unit learning rate, scalelab's convention).

    B's first kernel gets Adam's epsilon ``b_eps`` (``eps / c`` for the exact variant, ``eps`` for
    same-eps); passing it as a number lets both Adam variants share one compiled program.
    """
    config = OptimizerConfig(name=optimizer, eps=eps)
    direction_a = make_direction(config)
    if optimizer == "sgd":
        return direction_a, direction_a
    labels = lambda params: first_kernel_map(lambda _: "first", lambda _: "rest", params)  # noqa: E731
    first = make_direction(dataclasses.replace(config, eps=b_eps))
    return direction_a, optax.multi_transform({"first": first, "rest": direction_a}, labels)


def eps_sensitive_frac(adam_state_a, c, eps: float):
    """Share of first-kernel weights (with a nonzero second moment) where B's same-eps Adam step
    differs from the exact (eps/c) one by more than ``EPS_SENSITIVE_RATIO``.

    From A's state: ``sqrt(v_A_hat) = c sqrt(v_B_hat)``, and the ratio of the two B denominators
    is ``(sqrt(v_B_hat) + eps) / (sqrt(v_B_hat) + eps/c) = (sqrt(v_A_hat) + c eps) / (sqrt(v_A_hat) + eps)``.
    """

    nu = adam_state_a.nu["params"]["Dense_0"]["kernel"]
    b2 = OptimizerConfig().b2  # directions() uses the defaults
    root = jnp.sqrt(nu / (1 - b2 ** adam_state_a.count.astype(nu.dtype)))
    ratio = (root + c * eps) / (root + eps)
    seen = nu > 0
    sensitive = seen & (jnp.abs(ratio - 1) > EPS_SENSITIVE_RATIO)
    return jnp.sum(sensitive) / jnp.maximum(jnp.sum(seen), 1)


def pair_trajectory(model, loss_fn, optimizer: str, lr_power: int, lr: float, eps: float, params_a, c, b_eps, x, y,
                    order):  # fmt: skip
    """Trains A (inputs ``c x``, params ``params_a``) and B (inputs ``x``, first kernel ``c W``,
    learning rate ``c**lr_power lr`` and, for Adam, epsilon ``b_eps`` there) on the minibatches
    ``order`` (steps, batch) of ``(x, y)``; returns a ``StepRecord`` of arrays of shape (steps,).
    Pure and jittable; ``c`` and ``b_eps`` may be traced."""
    direction_a, direction_b = directions(optimizer, eps, b_eps)
    lr_a = jax.tree.map(lambda _: lr, params_a)
    lr_b = first_kernel_map(lambda _: lr * c**lr_power, lambda _: lr, params_a)
    to_b = lambda params: first_kernel_map(lambda w: c * w, lambda w: w, params)  # noqa: E731
    params_b = to_b(params_a)

    def loss(params, xb, yb):
        return jnp.mean(loss_fn(model.apply(params, xb), yb))

    def update(direction, lrs, params, opt_state, grads):
        updates, opt_state = direction.update(grads, opt_state, params)
        return jax.tree.map(lambda p, u, r: p - r * u, params, updates, lrs), opt_state

    def step(carry, idx):
        (pa, sa), (pb, sb) = carry
        xb, yb = x[idx], y[idx]
        loss_a, grads_a = jax.value_and_grad(loss)(pa, c * xb, yb)
        loss_b, grads_b = jax.value_and_grad(loss)(pb, xb, yb)
        pa, sa = update(direction_a, lr_a, pa, sa, grads_a)
        pb, sb = update(direction_b, lr_b, pb, sb, grads_b)
        sensitive = eps_sensitive_frac(sa, c, eps) if optimizer == "adam" else jnp.nan
        record = StepRecord(loss_a, loss_b, relative_distance(to_b(pa), pb), jnp.asarray(sensitive, loss_a.dtype))
        return ((pa, sa), (pb, sb)), record

    init = ((params_a, direction_a.init(params_a)), (params_b, direction_b.init(params_b)))
    _, records = jax.lax.scan(step, init, order)
    return records


def run_variant(model, loss_fn, variant: Variant, lr: float, eps: float, params_a, scales, x, y, orders):
    """Every (c, seed) pair of one variant in one compiled call: records of shape (C, S, steps)."""
    b_eps = eps / scales if variant.eps_over_c else np.full_like(scales, eps)
    static = (model, loss_fn, variant.optimizer, variant.lr_power, lr, eps)
    return _all_pairs(*static, params_a, scales, b_eps, x, y, orders)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _all_pairs(model, loss_fn, optimizer, lr_power, lr, eps, params_a, scales, b_eps, x, y, orders):
    def one(params, c, e, order):
        return pair_trajectory(model, loss_fn, optimizer, lr_power, lr, eps, params, c, e, x, y, order)

    per_seed = jax.vmap(one, in_axes=(0, None, None, 0))
    per_scale = jax.vmap(per_seed, in_axes=(None, 0, 0, None))
    return per_scale(params_a, scales, b_eps, orders)


# --- inputs: data, initial weights, minibatch order ---------------------------------------------


def base_inputs(settings: Settings, dataset):
    """(x, y) as numpy: the first ``train_limit`` training images under ``--base``, labels int32."""
    images = dataset.train_images.reshape(len(dataset.train_images), -1)
    if settings.train_limit is not None:
        if settings.train_limit > len(images):
            raise UsageError(f"--train-limit {settings.train_limit} must be at most {len(images)} (the split's size)")
        images = images[: settings.train_limit]
    if settings.batch_size > len(images):
        raise UsageError(f"--batch-size {settings.batch_size} is larger than the {len(images)} training examples")
    constants = fit_affine(parse_transform(settings.base), images)
    x = apply_affine(images, constants.shift, constants.scale).astype(settings.dtype)
    return x, dataset.train_labels[: len(images)].astype(np.int32)


def minibatch_orders(seeds: int, steps: int, batch_size: int, num_examples: int):
    """(seeds, steps, batch) example indices: epochs of shuffled examples, one stream per seed."""
    orders = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        epochs = -(-steps * batch_size // num_examples)
        flat = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
        orders.append(flat[: steps * batch_size].reshape(steps, batch_size))
    return np.stack(orders).astype(np.int32)


def initial_params(model, seeds: int, input_dim: int, dtype: str):
    """Flax-initialised params per seed, stacked on a leading axis, cast to ``dtype``."""

    def one(seed):
        params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, input_dim), jnp.float32))
        return jax.tree.map(lambda p: p.astype(dtype), params)

    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *[one(s) for s in range(seeds)])


# --- the experiment: all variants, files, table -------------------------------------------------


def measure(settings: Settings, dataset) -> dict[Variant, dict[str, Any]]:
    """Runs every variant; returns numpy arrays per variant, each (C, S, steps)."""
    x, y = base_inputs(settings, dataset)
    model = make_model(settings.hidden, dataset.num_classes, settings.activation, "glorot-uniform")
    params_a = initial_params(model, settings.seeds, x.shape[1], settings.dtype)
    orders = minibatch_orders(settings.seeds, settings.steps, settings.batch_size, len(x))
    scales = np.asarray(settings.scales, settings.dtype)
    results = {}
    for variant in chosen_variants(settings):
        lr = settings.sgd_lr if variant.optimizer == "sgd" else settings.adam_lr
        records = run_variant(model, get_loss(settings.loss), variant, lr, settings.eps, params_a, scales, x, y, orders)
        records = jax.tree.map(np.asarray, records)
        results[variant] = {**records._asdict(), "rel_loss_diff": rel_loss_diff(records.loss_a, records.loss_b)}
    return results


def rel_loss_diff(loss_a, loss_b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(loss_a - loss_b) / np.maximum(np.abs(loss_b), np.finfo(loss_b.dtype).tiny)


def summarize(settings: Settings, results) -> list[dict[str, Any]]:
    """One entry per (variant, c), in the order run."""
    return [
        summarize_pair(settings, variant, c, label, {k: v[i] for k, v in arrays.items()})
        for variant, arrays in results.items()
        for i, (c, label) in enumerate(zip(settings.scales, settings.scale_labels, strict=True))
    ]


def summarize_pair(settings: Settings, variant: Variant, c: float, label: str, arrays) -> dict[str, Any]:
    """Deviations of one (variant, c), arrays (seeds, steps): maxima over seeds and over the steps
    where both models are finite, the distance at steps 1, 10, 100, ... (how it grows), and when
    it first passes the tolerance."""
    finite = np.isfinite(arrays["loss_a"]) & np.isfinite(arrays["loss_b"]) & np.isfinite(arrays["rel_param_diff"])
    worst = {k: float(np.max(arrays[k][finite])) if finite.any() else None for k in ("rel_param_diff", "rel_loss_diff")}
    tolerance = TOLERANCE[settings.dtype]
    b_eps = settings.eps / c if variant.eps_over_c else settings.eps
    entry = {
        "optimizer": variant.optimizer, "variant": variant.name, "c": c, "c_label": label,
        "b_setup": variant.describe(), "exact_in_real_arithmetic": variant.exact,
        "b_first_kernel_lr_factor": c**variant.lr_power, "b_eps": None if variant.optimizer == "sgd" else b_eps,
        "max_rel_param_diff": worst["rel_param_diff"], "max_rel_loss_diff": worst["rel_loss_diff"],
        "rel_param_diff_at_step": {
            str(step): _finite_or_none(np.max(arrays["rel_param_diff"][:, step - 1]))
            for step in checkpoint_steps(settings.steps)
        },
        "first_step_over_tolerance": _first_step(arrays["rel_param_diff"] > tolerance),
        "nonfinite_steps": int((~finite).sum()),
        "first_nonfinite_step_a": _first_step(~np.isfinite(arrays["loss_a"])),
        "first_nonfinite_step_b": _first_step(~np.isfinite(arrays["loss_b"])),
        "final_loss_a_mean": _finite_or_none(np.mean(arrays["loss_a"][:, -1])),
        "eps_sensitive_frac_final": (
            None if variant.optimizer == "sgd" else float(np.mean(arrays["eps_sensitive_frac"][:, -1]))
        ),
    }  # fmt: skip
    if variant.exact:
        entry["within_tolerance"] = worst["rel_param_diff"] is not None and worst["rel_param_diff"] <= tolerance
    return entry


def _finite_or_none(value) -> float | None:
    """summary.json is strict JSON: NaN/inf become null."""
    return float(value) if math.isfinite(value) else None


def _first_step(flags) -> int | None:
    """Earliest 1-based step at which any seed's flag (seeds, steps) is set; None if none is."""
    return int(np.argmax(flags.any(axis=0))) + 1 if flags.any() else None


def checkpoint_steps(steps: int) -> list[int]:
    """Steps 1, 10, 100, ... below ``steps``, and ``steps`` itself: how a deviation grows."""
    return sorted({*(10**k for k in range(len(str(steps))) if 10**k < steps), steps})


def trajectories_csv(settings: Settings, results) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TRAJECTORY_COLUMNS)
    for variant, arrays in results.items():
        num_scales, num_seeds, steps = arrays["loss_a"].shape
        for i in range(num_scales):
            for seed in range(num_seeds):
                columns = [arrays[k][i, seed] for k in TRAJECTORY_COLUMNS[5:]]
                for step in range(steps):
                    writer.writerow([variant.optimizer, variant.name, repr(settings.scales[i]), seed, step + 1,
                                     *(repr(float(col[step])) for col in columns)])  # fmt: skip
    return out.getvalue()


def format_table(entries: list[dict[str, Any]]) -> str:
    """Max over seeds of the relative parameter distance at steps 1, 10, ..., and the worst loss gap."""
    steps = list(entries[0]["rel_param_diff_at_step"])
    num = lambda v: "n/a" if v is None else f"{v:.1e}"  # noqa: E731
    header = (f"{'optimizer':>9} {'variant':>9} {'c':>7} {'B lr factor':>11} "
              + " ".join(f"{'step ' + s:>10}" for s in steps)
              + f" {'loss gap':>9} {'eps-sens.':>9} {'nonfinite':>9}")  # fmt: skip
    lines = ["relative parameter distance ||T(theta_A) - theta_B|| / ||theta_B|| (max over seeds)", header,
             "-" * len(header)]  # fmt: skip
    for e in entries:
        share = "" if e["eps_sensitive_frac_final"] is None else f"{e['eps_sensitive_frac_final']:.1%}"
        lines.append(
            f"{e['optimizer']:>9} {e['variant']:>9} {e['c_label']:>7} {e['b_first_kernel_lr_factor']:>11.4g} "
            + " ".join(f"{num(e['rel_param_diff_at_step'][s]):>10}" for s in steps)
            + f" {num(e['max_rel_loss_diff']):>9} {share:>9} {e['nonfinite_steps']:>9}"
        )
    return "\n".join(lines)


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    parse_transform(settings.base)
    get_loss(settings.loss)
    make_model(settings.hidden, 10, settings.activation, "glorot-uniform")
    out = args.out or Path("runs") / f"{PROG}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "config.json").exists():
        raise UsageError(f"{out} already holds a run; choose another --out")
    dataset = load_dataset(settings.data, settings.data_dir)
    # A context manager, not jax.config.update: float64 stays on for this run only, so an
    # in-process caller (the tests) keeps its float32 defaults.
    with jax.enable_x64(settings.dtype == "float64"):
        base_inputs(settings, dataset)  # validates the limits before a run directory exists
        _make_dir(out)
        config = {"experiment": PROG, **dataclasses.asdict(settings), "dataset_source": dataset.source,
                  "variants": [dataclasses.asdict(v) | {"b_setup": v.describe()} for v in chosen_variants(settings)],
                  "tolerance": TOLERANCE[settings.dtype], "eps_sensitive_ratio": EPS_SENSITIVE_RATIO}  # fmt: skip
        write_json(out / "config.json", config)
        print(f"{PROG}: {len(settings.variants)} variants x {len(settings.scales)} scales x {settings.seeds} seeds, "
              f"{settings.steps} steps, {settings.dtype} -> {out}", file=sys.stderr)  # fmt: skip
        results = measure(settings, dataset)
    entries = summarize(settings, results)
    atomic_write_text(out / "trajectories.csv", trajectories_csv(settings, results))
    summary = {"dtype": settings.dtype, "tolerance": TOLERANCE[settings.dtype], "entries": entries}
    write_json(out / "summary.json", summary)
    print(format_table(entries))
    print(f"\nrun directory: {out} (trajectories.csv, summary.json, config.json)")
    return 0


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ScalelabError(f"cannot create {out}: {err.strerror}; choose a writable --out") from None


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
