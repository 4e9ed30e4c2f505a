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
* **Adam** (Kingma & Ba 2015, Alg. 1; ``m_hat / (sqrt(v_hat) + eps)``, which scalelab computes in
  the reordered form of ``scalelab.optim``): A's moments of the first kernel are ``m_A = c m_B``
  and ``v_A = c**2 v_B``, so A's step is ``m_B / (sqrt(v_B_hat) + eps / c)``, and ``c`` times it is
  B's step with learning rate ``c lr`` *and epsilon ``eps / c``* -- exact. With B's *same* ``eps``
  the two differ wherever ``sqrt(v_B_hat)`` is not large against both ``eps`` and ``eps / c``: that
  is where Adam's scale invariance breaks, and ``eps_sensitive_frac`` measures how many
  first-layer weights are there (the share whose same-eps step differs from the exact one by more
  than 1%).

Both models are trained by the library's step, as ``experiments.scale_grid`` trains a model:
``train.train_step`` on ``models.make_model``'s MLP with ``losses.get_loss``'s loss, initial
weights from ``train.init_state`` with the seed's init key (``grid.seed_keys``), the minibatches
of ``grid.epoch_batches`` (a fresh shuffle per epoch; the last batch of an epoch padded with
zero-weight examples), and the raw pixels transformed inside the step, ``(x - shift) * scale``
(``train.Hypers``). A is scale_grid's model on the transform ``c * base`` with the optimiser of
``optim.make_direction``; B differs from it only in its first kernel (initial weights ``c W``; a
direction that multiplies that kernel's update by ``c**lr_power`` and, for Adam, uses ``eps / c``
there: ``b_direction``). ``--x64`` runs the same steps in float64.

The base inputs ``x`` are ``--base`` (default ``/255``, pixels in [0, 1]), so with the default
scales A sees: ``c = 255`` raw pixels (the posts' failing ``/1``), ``c = 0.255`` pixels/1000 (the
second post's ``/1000``), ``c = 1/255`` pixels/65025 (eps-dominated). Read the other way, for
Adam: training on raw pixels *is* training on [0, 1] pixels with a 255x larger first-layer
initialisation and a 255x larger first-layer learning rate (0.255 instead of 1e-3); for SGD the
learning rate factor is 65025. ``--base /1`` makes raw pixels the base and ``c = 1/255`` the
``/255`` transform.

In real arithmetic the exact variants agree perfectly; what is measured is float rounding (A
multiplies its inputs by ``c * scale``, B its first kernel by ``c``), carried along by training:
~1e-7 in float32 and ~1e-16 in float64 (``--x64``) for ``c = 0.255`` and ``1/255`` over hundreds of
steps. Raw pixels (``c = 255``) are different: training there is chaotic, and the rounding gap
grows exponentially (measured with ``--quick``: e-folding every ~6-7 steps for Adam, and for SGD
on one of two seeds) in float32 and float64 alike -- float64 only starts it ~1e-9 lower -- until it
is as large as the same-eps gap after a few hundred steps. So read the exact variants at the early
steps (``rel_param_diff_at_step``: 1, 10, 100, ...) and against the same-eps gap at the same step:
at step 1 the same eps is already 3e-5..2e-4 off (``--quick``), the exact variants at rounding level.

Configuration: one frozen ``Config`` (defaults ``DEFAULT``, ``--quick`` is ``QUICK``); every field
is the flag ``--field-name``, and a flag given on the command line replaces that field of the
preset.

Writes ``--out DIR``: ``config.json`` (the ``Config``'s fields, plus ``scale_values``, ``dtype``,
``variant_setups``, ``tolerance``, ``eps_sensitive_ratio`` and ``dataset_source``);
``trajectories.csv``, one row per (optimizer, variant, c, seed, step) with A's and B's minibatch
loss before the step (``loss_a``, ``loss_b``, and their relative gap ``rel_loss_diff``; NaN after
a model diverged, since the step then freezes it) and, after it, the relative parameter distance
``rel_param_diff`` = ``||T(theta_A) - theta_B|| / ||theta_B||`` (``T`` multiplies A's first kernel
by c) and, for Adam, ``eps_sensitive_frac`` (computed on A's trajectory, so equal for both Adam
variants; ``nan`` for SGD); ``summary.json``, per optimizer, variant and c: the maxima over seeds
and steps, the distance at steps 1, 10, 100, ..., the first step over the tolerance, and
non-finite counts.
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

from scalelab import cli, grid, train
from scalelab.config import option
from scalelab.data import load_dataset
from scalelab.errors import ScalelabError, UsageError
from scalelab.losses import get_loss
from scalelab.models import make_model
from scalelab.optim import OptimizerConfig, SplitDirection, make_direction
from scalelab.results import atomic_write_text, write_json
from scalelab.transforms import fit_affine, parse_transform

PROG = "lr_equivalence"
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


# --- configuration: one frozen dataclass, its presets, the command line built from it -----------


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


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


@dataclasses.dataclass(frozen=True)
class Config:
    """One run of the experiment. Each field is the flag ``--field-name`` (``build_parser``), its
    help and parser beside it (``scalelab.config.option``); constructing one checks every field,
    so a bad value is a ``UsageError`` naming its flag, from the CLI and from Python alike."""

    scales: tuple[str, ...] = option(
        ("255", "0.255", "1/255"), "comma-separated c > 0; a fraction like 1/255 is allowed", parse=_comma_list
    )
    base: str = option("/255", "input transform that gives x, e.g. /255 or /1")
    variants: tuple[str, ...] = option(
        tuple(v.key for v in VARIANTS),
        "comma-separated subset of " + ", ".join(v.key for v in VARIANTS),
        parse=_comma_list,
    )
    steps: int = option(1000, "optimiser steps", parse=cli.positive_int)
    seeds: int = option(3, "number of seeds, 0..N-1", parse=cli.positive_int)
    train_limit: int | None = option(None, "use the first N training examples (default all)", parse=cli.positive_int)
    batch_size: int = option(32, "minibatch size", parse=cli.positive_int)
    hidden: tuple[int, ...] = option((128,), "hidden widths", parse=cli.int_list)
    activation: str = option("relu", "relu, sigmoid, tanh, gelu, identity")
    loss: str = option("ce", "ce (exact), keras-ce, mse")
    sgd_lr: float = option(1e-2, "SGD learning rate", parse=cli.positive_float)
    adam_lr: float = option(1e-3, "Adam learning rate", parse=cli.positive_float)
    eps: float = option(1e-7, "Adam epsilon (Keras')", parse=cli.positive_float)
    x64: bool = option(False, "compute in float64 (shows the deviations are rounding)")
    data: str = option(
        "fashion_mnist",
        "dataset: fashion_mnist, mnist, idx (the four IDX files in --data-dir) or tfds:NAME (a prepared TFDS dataset)",
    )
    data_dir: str | None = option(
        None,
        "folder with train-images-idx3-ubyte[.gz] etc. (default: $SCALELAB_DATA_DIR, "
        "/usr/share/datasets/fashion-mnist, data/fashion-mnist)",
    )

    def __post_init__(self):
        values = self.scale_values
        if len(set(values)) != len(values):
            raise UsageError(f"--scales {','.join(self.scales)!r} lists a value twice; list each once")
        known = [v.key for v in VARIANTS]
        if any(v not in known for v in self.variants) or len(set(self.variants)) != len(self.variants):
            raise UsageError(f"--variants {','.join(self.variants)!r}: list each of {', '.join(known)} at most once")
        parse_transform(self.base)
        get_loss(self.loss)
        make_model(self.hidden, 10, self.activation, "glorot-uniform")

    @property
    def scale_values(self) -> tuple[float, ...]:
        """The scales c as numbers; ``scales`` keeps them as written (for tables)."""
        return tuple(parse_scale(label) for label in self.scales)

    @property
    def dtype(self) -> str:
        return "float64" if self.x64 else "float32"


DEFAULT = Config()
QUICK = dataclasses.replace(DEFAULT, train_limit=2048, steps=200, seeds=2)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def build_parser() -> cli.Parser:
    """The command line: one flag per ``Config`` field (default None: the preset's value), then
    ``--out``, ``--quick`` and ``--debug``, which are not part of the configuration."""
    p = cli.Parser(prog=f"python -m experiments.{PROG}", description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Config):
        default, text = getattr(DEFAULT, field.name), field.metadata["help"]
        if isinstance(default, bool):
            p.add_argument(_flag(field.name), action="store_true", default=None, help=text)
        else:
            text += "" if default is None else f" (default {_shown(default)})"
            p.add_argument(_flag(field.name), type=field.metadata["parse"], help=text)
    p.add_argument("--out", type=Path, help=f"run directory to create (default runs/{PROG}-TIMESTAMP)")
    quick = [f"{_flag(f.name)} {_shown(getattr(QUICK, f.name))}" for f in dataclasses.fields(Config)
             if getattr(QUICK, f.name) != getattr(DEFAULT, f.name)]  # fmt: skip
    p.add_argument("--quick", action="store_true", help="seconds-long run: " + ", ".join(quick))
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def config_from_args(args) -> Config:
    """``QUICK`` with ``--quick``, else ``DEFAULT``, with each flag given in place of its field."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    return dataclasses.replace(QUICK if args.quick else DEFAULT, **given)


def chosen_variants(config: Config) -> list[Variant]:
    return [v for v in VARIANTS if v.key in config.variants]


# --- the numerical core: one (A, B) pair trained side by side by the library's step -------------


def _is_first_kernel(path) -> bool:
    return tuple(getattr(k, "key", k) for k in path) == ("params", "Dense_0", "kernel")


def first_kernel_map(first, rest, *trees):
    """``tree_map`` that applies ``first`` to the Dense_0 kernel leaf and ``rest`` to the others."""
    return jax.tree_util.tree_map_with_path(
        lambda path, *leaves: first(*leaves) if _is_first_kernel(path) else rest(*leaves), *trees
    )


def to_b(params, c):
    """``T``: the params with the first kernel multiplied by ``c`` (A's weights in B's coordinates)."""
    return first_kernel_map(lambda w: c * w, lambda w: w, params)


def b_direction(config: OptimizerConfig, factor, b_eps) -> SplitDirection:
    """B's optimiser: ``make_direction(config)``, except that the first kernel's update is
    multiplied by ``factor`` (its learning-rate factor ``c**lr_power``) and, for Adam, computed with
    epsilon ``b_eps`` (``eps / c`` for the exact variant, ``eps`` for same-eps).

    SGD's and Adam's states do not depend on epsilon, so the state is ``make_direction(config)``'s
    and only the update read off it (``from_state``, as ``train.masked_update`` does) takes the
    other epsilon for that kernel. ``factor`` and ``b_eps`` may be traced, so that every scale
    and both Adam variants share one compiled program.
    """
    base = make_direction(config)
    first = make_direction(dataclasses.replace(config, eps=b_eps))

    def from_state(grads, state, params):
        updates = (first.from_state(grads, state, params), base.from_state(grads, state, params))
        return first_kernel_map(lambda u, _: factor * u, lambda _, u: u, *updates)

    def update(grads, state, params=None):
        new_state = base.update(grads, state, params)[1]
        return from_state(grads, new_state, params), new_state

    return SplitDirection(base.init, update, from_state)


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


def eps_sensitive_frac(adam_state_a, c, eps: float):
    """Share of first-kernel weights (with a nonzero second moment) where B's same-eps Adam step
    differs from the exact (eps/c) one by more than ``EPS_SENSITIVE_RATIO``.

    From A's state: ``sqrt(v_A_hat) = c sqrt(v_B_hat)``, and the ratio of the two B denominators
    is ``(sqrt(v_B_hat) + eps) / (sqrt(v_B_hat) + eps/c) = (sqrt(v_A_hat) + c eps) / (sqrt(v_A_hat) + eps)``.
    """
    nu = adam_state_a.nu["params"]["Dense_0"]["kernel"]
    b2 = OptimizerConfig().b2  # pair_trajectory uses the defaults
    root = jnp.sqrt(nu / (1 - b2 ** adam_state_a.count.astype(nu.dtype)))
    ratio = (root + c * eps) / (root + eps)
    seen = nu > 0
    sensitive = seen & (jnp.abs(ratio - 1) > EPS_SENSITIVE_RATIO)
    return jnp.sum(sensitive) / jnp.maximum(jnp.sum(seen), 1)


def initial_states(model, direction_a, direction_b, init_key, input_dim: int, c, dtype):
    """A's and B's ``TrainState``: ``train.init_state``'s weights for the seed's init key (the
    weights scale_grid starts that seed from), cast to ``dtype``; B's first kernel is ``c W``."""
    state = train.init_state(model, direction_a, init_key, input_dim)
    params_a = jax.tree.map(lambda p: p.astype(dtype), state.params)
    params_b = to_b(params_a, c)
    return (
        state._replace(params=params_a, opt_state=direction_a.init(params_a)),
        state._replace(params=params_b, opt_state=direction_b.init(params_b)),
    )


def _minibatch_loss(metrics: train.StepMetrics):
    """The step's mean loss over the real examples (NaN once the step has frozen a diverged model)."""
    return metrics.loss_sum / metrics.examples


def pair_trajectory(model, loss_fn, optimizer: str, lr_power: int, eps: float, init_key, hypers_b: train.Hypers, c,
                    b_eps, x, y, batches):  # fmt: skip
    """Trains A (inputs ``(x - shift) * c scale``) and B (inputs ``(x - shift) * scale``, first
    kernel ``c W``, its update times ``c**lr_power`` and, for Adam, epsilon ``b_eps`` there) with
    ``train.train_step``, both at ``hypers_b.lr`` and in ``hypers_b.scale``'s dtype, on the raw
    examples ``x`` (N, D) and labels ``y``. ``batches`` = (indices (steps, B), weights (steps, B),
    epochs (steps,)); returns a ``StepRecord`` of arrays of shape (steps,). Pure and jittable;
    ``c`` and ``b_eps`` may be traced."""
    config = OptimizerConfig(name=optimizer, eps=eps)
    direction_a, direction_b = make_direction(config), b_direction(config, c**lr_power, b_eps)
    hypers_a = hypers_b._replace(scale=c * hypers_b.scale)
    dtype = hypers_b.scale.dtype

    def step(states, batch_xs):
        order, weight, epoch = batch_xs
        batch = train.Batch(x=x[order].astype(dtype), y=y[order], weight=weight.astype(dtype))
        state_a, metrics_a = train.train_step(model, loss_fn, direction_a, states[0], hypers_a, batch, epoch)
        state_b, metrics_b = train.train_step(model, loss_fn, direction_b, states[1], hypers_b, batch, epoch)
        sensitive = eps_sensitive_frac(state_a.opt_state, c, eps) if optimizer == "adam" else jnp.nan
        distance = relative_distance(to_b(state_a.params, c), state_b.params)
        record = StepRecord(_minibatch_loss(metrics_a), _minibatch_loss(metrics_b), distance, sensitive)
        return (state_a, state_b), jax.tree.map(lambda v: jnp.asarray(v, dtype), record)

    states = initial_states(model, direction_a, direction_b, init_key, x.shape[1], c, dtype)
    _, records = jax.lax.scan(step, states, batches)
    return records


def run_variant(model, loss_fn, variant: Variant, hypers: train.Hypers, eps: float, init_keys, scales, x, y, batches):
    """Every (c, seed) pair of one variant in one compiled call: records of shape (C, S, steps)."""
    b_eps = eps / scales if variant.eps_over_c else np.full_like(scales, eps)
    static = (model, loss_fn, variant.optimizer, variant.lr_power, eps)
    return _all_pairs(*static, init_keys, hypers, scales, b_eps, x, y, batches)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _all_pairs(model, loss_fn, optimizer, lr_power, eps, init_keys, hypers, scales, b_eps, x, y, batches):
    orders, weights, epochs = batches

    def one(init_key, c, e, order):
        return pair_trajectory(model, loss_fn, optimizer, lr_power, eps, init_key, hypers, c, e, x, y,
                               (order, weights, epochs))  # fmt: skip

    per_seed = jax.vmap(one, in_axes=(0, None, None, 0))
    per_scale = jax.vmap(per_seed, in_axes=(None, 0, 0, None))
    return per_scale(init_keys, scales, b_eps, orders)


# --- inputs: data, input transform, minibatch order ---------------------------------------------


def base_inputs(config: Config, dataset):
    """(x, y): the first ``train_limit`` training images, flattened raw pixels (uint8), labels int32."""
    images = dataset.train_images.reshape(len(dataset.train_images), -1)
    if config.train_limit is not None:
        if config.train_limit > len(images):
            raise UsageError(f"--train-limit {config.train_limit} must be at most {len(images)} (the split's size)")
        images = images[: config.train_limit]
    if config.batch_size > len(images):
        raise UsageError(f"--batch-size {config.batch_size} is larger than the {len(images)} training examples")
    return images, dataset.train_labels[: len(images)].astype(np.int32)


def base_hypers(config: Config, images, lr: float) -> train.Hypers:
    """B's ``train.Hypers`` in ``config.dtype``: ``--base`` fitted on ``images``, learning rate ``lr``."""
    constants = fit_affine(parse_transform(config.base), images)
    return train.Hypers(*(jnp.asarray(v, config.dtype) for v in (constants.shift, constants.scale, lr)))


def minibatches(program: grid.Program, order_keys, steps: int, num_train: int):
    """The first ``steps`` minibatches of ``program``'s epochs 0, 1, ... (``grid.epoch_batches``,
    which depends on the program's batch size only): indices (S, steps, B), weights (steps, B)
    (zero for the padding of an epoch's last batch) and each step's epoch (steps,) int32."""
    per_epoch = program.num_steps(num_train)
    parts = [grid.epoch_batches(program, order_keys, epoch, num_train) for epoch in range(-(-steps // per_epoch))]
    orders = jnp.concatenate([order for order, _ in parts])[:steps].swapaxes(0, 1)
    weights = jnp.concatenate([weight for _, weight in parts])[:steps]
    return orders, weights, jnp.repeat(jnp.arange(len(parts), dtype=jnp.int32), per_epoch)[:steps]


# --- the experiment: all variants, files, table -------------------------------------------------


def measure(config: Config, dataset) -> dict[Variant, dict[str, Any]]:
    """Runs every variant, in ``config.dtype`` (call it under ``jax.enable_x64`` for float64);
    returns numpy arrays per variant, each (C, S, steps)."""
    x, y = base_inputs(config, dataset)
    model = make_model(config.hidden, dataset.num_classes, config.activation, "glorot-uniform")
    loss_fn = get_loss(config.loss)
    init_keys, order_keys = grid.seed_keys(np.arange(config.seeds))
    # scale_grid's program for A with Adam; its minibatch order is the same for every optimiser.
    program = grid.Program(model, loss_fn, make_direction(OptimizerConfig()), config.batch_size, patience=0)
    batches = minibatches(program, order_keys, config.steps, len(x))
    scales = np.asarray(config.scale_values, config.dtype)
    results = {}
    for variant in chosen_variants(config):
        hypers = base_hypers(config, x, config.sgd_lr if variant.optimizer == "sgd" else config.adam_lr)
        records = run_variant(model, loss_fn, variant, hypers, config.eps, init_keys, scales, x, y, batches)
        records = jax.tree.map(np.asarray, records)
        results[variant] = {**records._asdict(), "rel_loss_diff": rel_loss_diff(records.loss_a, records.loss_b)}
    return results


def rel_loss_diff(loss_a, loss_b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(loss_a - loss_b) / np.maximum(np.abs(loss_b), np.finfo(loss_b.dtype).tiny)


def summarize(config: Config, results) -> list[dict[str, Any]]:
    """One entry per (variant, c), in the order run."""
    return [
        summarize_pair(config, variant, c, label, {k: v[i] for k, v in arrays.items()})
        for variant, arrays in results.items()
        for i, (c, label) in enumerate(zip(config.scale_values, config.scales, strict=True))
    ]


def summarize_pair(config: Config, variant: Variant, c: float, label: str, arrays) -> dict[str, Any]:
    """Deviations of one (variant, c), arrays (seeds, steps): maxima over seeds and over the steps
    where both models are finite, the distance at steps 1, 10, 100, ... (how it grows), and when
    it first passes the tolerance."""
    finite = np.isfinite(arrays["loss_a"]) & np.isfinite(arrays["loss_b"]) & np.isfinite(arrays["rel_param_diff"])
    worst = {k: float(np.max(arrays[k][finite])) if finite.any() else None for k in ("rel_param_diff", "rel_loss_diff")}
    tolerance = TOLERANCE[config.dtype]
    b_eps = config.eps / c if variant.eps_over_c else config.eps
    entry = {
        "optimizer": variant.optimizer, "variant": variant.name, "c": c, "c_label": label,
        "b_setup": variant.describe(), "exact_in_real_arithmetic": variant.exact,
        "b_first_kernel_lr_factor": c**variant.lr_power, "b_eps": None if variant.optimizer == "sgd" else b_eps,
        "max_rel_param_diff": worst["rel_param_diff"], "max_rel_loss_diff": worst["rel_loss_diff"],
        "rel_param_diff_at_step": {
            str(step): _finite_or_none(np.max(arrays["rel_param_diff"][:, step - 1]))
            for step in checkpoint_steps(config.steps)
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


def trajectories_csv(config: Config, results) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TRAJECTORY_COLUMNS)
    for variant, arrays in results.items():
        num_scales, num_seeds, steps = arrays["loss_a"].shape
        for i in range(num_scales):
            for seed in range(num_seeds):
                columns = [arrays[k][i, seed] for k in TRAJECTORY_COLUMNS[5:]]
                for step in range(steps):
                    writer.writerow([variant.optimizer, variant.name, repr(config.scale_values[i]), seed, step + 1,
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


def config_record(config: Config, dataset_source: str) -> dict[str, Any]:
    """``config.json``: the ``Config``'s fields as given, then what follows from them."""
    return {
        "experiment": PROG, **dataclasses.asdict(config), "scale_values": list(config.scale_values),
        "dtype": config.dtype, "dataset_source": dataset_source,
        "variant_setups": [dataclasses.asdict(v) | {"b_setup": v.describe()} for v in chosen_variants(config)],
        "tolerance": TOLERANCE[config.dtype], "eps_sensitive_ratio": EPS_SENSITIVE_RATIO,
    }  # fmt: skip


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    out = args.out or Path("runs") / f"{PROG}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "config.json").exists():
        raise UsageError(f"{out} already holds a run; choose another --out")
    dataset = load_dataset(config.data, config.data_dir)
    base_inputs(config, dataset)  # validates the limits before a run directory exists
    _make_dir(out)
    write_json(out / "config.json", config_record(config, dataset.source))
    print(f"{PROG}: {len(config.variants)} variants x {len(config.scales)} scales x {config.seeds} seeds, "
          f"{config.steps} steps, {config.dtype} -> {out}", file=sys.stderr)  # fmt: skip
    # A context manager, not jax.config.update: float64 stays on for this run only, so an
    # in-process caller (the tests) keeps its float32 defaults.
    with jax.enable_x64(config.x64):
        results = measure(config, dataset)
    entries = summarize(config, results)
    atomic_write_text(out / "trajectories.csv", trajectories_csv(config, results))
    write_json(out / "summary.json", {"dtype": config.dtype, "tolerance": TOLERANCE[config.dtype], "entries": entries})
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
