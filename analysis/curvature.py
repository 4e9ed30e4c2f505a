"""Curvature of saved MLP parameters, so scalelab's numbers can be checked against other tools.

    python -m analysis.curvature --run RUN_DIR --epoch 5 [--model 3] --top-k 5 --x64 --json OUT.json
    python -m analysis.curvature --params FILE.npz [--model 3] --inputs /255 --loss ce --examples 0:512 \
        --top-k 5 --trace --x64 --json OUT.json

With ``--run RUN_DIR --epoch E`` the parameters come from ``RUN_DIR/params/epoch_EEE.npz`` (0 = init)
and everything else from the run's ``config.json``, as the run measured it for ``curvature.csv``:
the loss (``config.train.loss``, e.g. ``keras-ce``), each model's input transform (fitted on the
run's own, possibly ``--train-limit``-ed, training split), the activation, widths and init, and the
examples (the first ``config.curvature.examples`` training examples). The JSON then holds one
result per model (or only ``--model M``'s), and ``--run RUN --epoch E --model M`` reproduces that
model's ``loss`` and ``grad_norm`` in ``curvature.csv`` at epoch E to float32 rounding, and its
``top_eig_1`` within the two Ritz residuals (``top_res_1`` and ours): to rounding once both converged.

``FILE.npz`` holds Flax-layout arrays ``Dense_0/kernel`` (in, out), ``Dense_0/bias``, ``Dense_1/kernel``,
..., or a run's several models as ``model_{m}/Dense_{i}/kernel|bias`` (``params/epoch_EEE.npz``),
of which ``--model M`` picks one; the widths come from the shapes. The data is the whole training
split of ``--data`` (default Fashion-MNIST), and the defaults are ``--inputs /255 --loss ce
--examples 0:512 --activation relu``.

``--loss``, ``--examples``, ``--activation`` and ``--inputs`` override either form's defaults. The loss
and its gradient come from ``scalelab.train.batch_loss`` and ``global_norm`` and the Hessian from
``scalelab.measure.hvp_fn``, as in a run; the eigenvalues from a ``--lanczos-steps``
Lanczos run (default 64) from a ``--seed`` start vector. Every result names the ``loss_name`` and
``examples`` it used beside the numbers (``loss``, ``grad_norm``, ``top_eigenvalues``, ...).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from scalelab import cli
from scalelab.errors import ScalelabError, UsageError

PROG = "analysis.curvature"
# What --params assumes where the file says nothing and no flag is given.
PARAMS_DEFAULTS = {"inputs": "/255", "examples": "0:512", "activation": "relu", "loss": "ce"}


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, help="npz of Dense_i/kernel|bias arrays, or a run's model_m/Dense_i/...")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="a scale_grid run directory (instead of --params)")
    p.add_argument("--epoch", type=cli.non_negative_int, help="with --run: the epoch's saved params (0 = init)")
    p.add_argument(
        "--model", type=cli.non_negative_int,
        help="one model: with --run (default: every model) or of a --params file holding several",
    )  # fmt: skip
    p.add_argument("--inputs", help="input transform, e.g. /255, zscore, [-1,1] (default: the run's; --params: /255)")
    p.add_argument("--loss", help="keras-ce, ce or mse (default: the run's config.train.loss; --params: ce)")
    p.add_argument(
        "--examples",
        help="training examples START:STOP (default: the run's first config.curvature.examples; --params: 0:512)",
    )
    p.add_argument("--activation", help="hidden activation (default: the run's; --params: relu)")
    p.add_argument("--top-k", type=cli.positive_int, default=5, help="top eigenvalues to report")
    p.add_argument("--lanczos-steps", type=cli.positive_int, default=64, help="Lanczos steps (default 64)")
    p.add_argument("--trace", action="store_true", help="also estimate the trace (Hutchinson)")
    p.add_argument("--trace-probes", type=cli.positive_int, default=30, help="Rademacher probes (default 30)")
    p.add_argument("--x64", action="store_true", help="compute in float64")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--seed", type=int, default=0, help="seed of the start vector and probes")
    cli.add_data_flags(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise ScalelabError(f"{path} not found; pass an .npz of Flax-layout MLP parameters") from None
    except Exception as err:
        raise ScalelabError(f"{path} is not a readable .npz ({type(err).__name__})") from None


def npz_models(path: Path) -> dict[int | None, dict[str, np.ndarray]]:
    """The npz's arrays by model: ``{None: arrays}`` for one model's file, ``{m: arrays}`` for a run's."""
    models: dict[int | None, dict[str, np.ndarray]] = {}
    for key, value in _read_npz(path).items():
        match = re.fullmatch(r"model_(\d+)/(.+)", key)
        model, name = (int(match[1]), match[2]) if match else (None, key)
        models.setdefault(model, {})[name] = value
    if None in models and len(models) > 1:
        raise ScalelabError(f"{path}: mixes model_m/... arrays with others such as {next(iter(models[None]))!r}")
    return models


def pick_model(path: Path, models: dict[int | None, dict], model: int | None) -> tuple[int | None, dict]:
    """``(model number, its arrays)``: ``--model`` must name one of the file's models when it holds several."""
    if None in models:
        if model is not None:
            raise UsageError(f"--model {model}: {path} holds one model's arrays (no model_m/ prefix); drop --model")
        return None, models[None]
    held = sorted(models)
    names = ", ".join(map(str, held))
    if model is None:
        if len(held) == 1:
            return held[0], models[held[0]]
        raise UsageError(f"{path} holds models {names}; pick one with --model M")
    if model not in models:
        raise UsageError(f"--model {model}: {path} holds models {names}")
    return model, models[model]


def flax_params(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    """``{'params': {'Dense_i': {'kernel', 'bias'}}}`` from one model's flat arrays, with shapes checked."""
    layers: dict[str, dict] = {}
    for key, value in arrays.items():
        match = re.fullmatch(r"(?:params/)?(Dense_\d+)/(kernel|bias)", key)
        if not match:
            raise ScalelabError(
                f"{path}: unexpected array {key!r}; expected Dense_i/kernel and Dense_i/bias "
                "(or a run's model_m/Dense_i/kernel|bias)"
            )
        layers.setdefault(match[1], {})[match[2]] = value
    names = sorted(layers, key=lambda n: int(n.split("_")[1]))
    if not names or names != [f"Dense_{i}" for i in range(len(names))]:
        raise ScalelabError(f"{path}: layers must be Dense_0..Dense_L without gaps, found {names}")
    for name in names:
        if set(layers[name]) != {"kernel", "bias"}:
            raise ScalelabError(f"{path}: {name} needs both kernel and bias, found {sorted(layers[name])}")
    for prev, name in zip(names, names[1:], strict=False):
        if layers[prev]["kernel"].shape[1] != layers[name]["kernel"].shape[0]:
            raise ScalelabError(f"{path}: {prev} outputs do not match {name} inputs")
    return {"params": layers}


def load_flax_npz(path: Path, model: int | None = None) -> dict:
    """One model's Flax params from an npz: a single model's, or model ``model`` of a run's file."""
    return flax_params(path, pick_model(path, npz_models(path), model)[1])


def parse_examples(text: str) -> slice:
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or int(match[1]) >= int(match[2]):
        raise UsageError(f"--examples {text!r} must be START:STOP with START < STOP, e.g. 0:512")
    return slice(int(match[1]), int(match[2]))


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.examples is not None:
        parse_examples(args.examples)  # a malformed range is a usage error before anything is loaded
    if (args.params is None) == (args.run is None):
        raise UsageError("give either --params FILE.npz or --run RUN_DIR --epoch E")
    if args.run is not None and args.epoch is None:
        raise UsageError("--run RUN_DIR needs --epoch E (0 = init; see RUN_DIR/params/)")
    import jax

    # A context, not a global switch: callers in the same process (tests, notebooks) keep float32.
    with jax.enable_x64(bool(args.x64)):
        result = analyse_params(args) if args.params is not None else analyse_run(args)
    text = json.dumps(result, indent=2)
    if args.json:
        from scalelab.results import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


def _setting(args, name: str, run_value=None) -> str:
    """A flag's value, else the run's (``run_value``), else the --params default."""
    given = getattr(args, name)
    if given is not None:
        return given
    return PARAMS_DEFAULTS[name] if run_value is None else run_value


def analyse_params(args) -> dict:
    """One model of ``--params FILE.npz`` on the whole training split of ``--data``."""
    from scalelab.data import load_dataset

    model, arrays = pick_model(args.params, npz_models(args.params), args.model)
    params = flax_params(args.params, arrays)
    dataset = load_dataset(args.data or "fashion_mnist", args.data_dir)
    train = dataset.train_images.reshape(len(dataset.train_images), -1), dataset.train_labels.astype(np.int32)
    layers = params["params"]
    hidden = tuple(int(layers[f"Dense_{i}"]["kernel"].shape[1]) for i in range(len(layers) - 1))
    one = analyse(
        params, hidden=hidden, init="glorot-uniform", activation=_setting(args, "activation"),
        loss_name=_setting(args, "loss"), inputs=_setting(args, "inputs"), train=train,
        examples=_setting(args, "examples"), args=args,
    )  # fmt: skip
    return {"params": str(args.params), **({} if model is None else {"model": model}), **one}


def analyse_run(args) -> dict:
    """Every (or one) model of a run at a saved epoch, each as the run measured it."""
    from scalelab.data import load_dataset
    from scalelab.planning import plan_study, prepare_arrays
    from scalelab.results import RunDir

    run_dir = RunDir.open(args.run)
    config = run_dir.config()
    dataset = load_dataset(config.data.name, config.data.data_dir)
    plan = plan_study(config, dataset)
    # The transform statistics and the measured examples come from the run's own (possibly
    # limited) training split, as in planning.plan_grid and measure.measurement_batch.
    train = prepare_arrays(dataset, config)[:2]
    run_examples = f"0:{min(config.curvature.examples, len(train[0]))}"
    # Each model with its own program's config (its static axes: widths, activation, loss, ...).
    every = [(m, grid.config) for grid in plan.grids for m in grid.models]
    models = every if args.model is None else [(m, c) for m, c in every if m.index == args.model]
    if not models:
        raise UsageError(f"--model {args.model}: the run has models 0..{len(every) - 1}")
    results = []
    for m, config in models:
        params = run_dir.load_params(args.epoch, m.index)
        one = analyse(
            params, hidden=tuple(config.model.hidden), init=config.model.init,
            activation=_setting(args, "activation", config.model.activation),
            loss_name=_setting(args, "loss", config.train.loss), inputs=_setting(args, "inputs", m["inputs"]),
            train=train, examples=_setting(args, "examples", run_examples), args=args, lr=m["lr"],
        )  # fmt: skip
        results.append({**m.columns, **one})  # the model, its grid coordinates, then what was used
    return {"run": str(args.run), "epoch": args.epoch, "models": results}


def measured_model(params: dict, hidden: tuple[int, ...], init: str, activation: str, input_dim: int):
    """The run's MLP for ``params``, after checking the saved shapes against the config and the data."""
    from scalelab.models import make_model

    layers = params["params"]
    shapes = tuple(int(layers[f"Dense_{i}"]["kernel"].shape[1]) for i in range(len(layers) - 1))
    if shapes != tuple(hidden):
        raise ScalelabError(f"the saved params have hidden widths {shapes}, the run's config {tuple(hidden)}")
    if layers["Dense_0"]["kernel"].shape[0] != input_dim:
        raise ScalelabError(f"Dense_0 takes {layers['Dense_0']['kernel'].shape[0]} inputs, "
                            f"the data has {input_dim} pixels")  # fmt: skip
    num_classes = int(layers[f"Dense_{len(layers) - 1}"]["kernel"].shape[1])
    return make_model(hidden, num_classes, activation, init)


def measurement_inputs(train, inputs: str, examples: str, lr: float, dtype):
    """(hypers, batch): the transform fitted on ``train`` as a run fits it, and the chosen examples."""
    import jax.numpy as jnp

    from scalelab.train import Batch, Hypers
    from scalelab.transforms import fit_affine, parse_transform

    rows = parse_examples(examples)
    train_x, train_y = train
    if rows.stop > len(train_x):
        raise UsageError(f"--examples {examples}: the training split has {len(train_x)} examples")
    constants = fit_affine(parse_transform(inputs), train_x)
    hypers = Hypers(jnp.asarray(constants.shift, dtype), jnp.asarray(constants.scale, dtype), jnp.asarray(lr, dtype))
    count = rows.stop - rows.start
    batch = Batch(
        x=jnp.asarray(train_x[rows], dtype), y=jnp.asarray(train_y[rows], jnp.int32), weight=jnp.ones(count, dtype)
    )
    return hypers, batch


def analyse(
    params: dict, *, hidden: tuple[int, ...], init: str, activation: str, loss_name: str, inputs: str, train,
    examples: str, args, lr: float = 0.0,
) -> dict:  # fmt: skip
    """Loss, gradient norm, top eigenpairs (and trace) of one MLP on the given training examples.

    The loss is ``train.batch_loss`` with the ``Hypers`` a run builds, its Hessian
    ``measure.hvp_fn``: the very functions a run's measurements use.
    """
    import jax
    import jax.numpy as jnp

    from scalelab import curvature
    from scalelab.losses import get_loss
    from scalelab.measure import hvp_fn
    from scalelab.train import batch_loss, global_norm

    dtype = jnp.float64 if args.x64 else jnp.float32
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    model = measured_model(params, hidden, init, activation, train[0].shape[1])
    loss_fn = get_loss(loss_name)
    hypers, batch = measurement_inputs(train, inputs, examples, lr, dtype)
    matvec = curvature.flat_matvec(hvp_fn(model, loss_fn, hypers, batch), params)
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    key = jax.random.PRNGKey(args.seed)
    v0 = jax.random.normal(key, (n,), dtype)
    steps = min(args.lanczos_steps, n)  # a Krylov space cannot exceed the dimension
    if args.top_k > steps:
        raise UsageError(f"--top-k {args.top_k} needs at least as many --lanczos-steps (now {steps})")
    top = jax.jit(lambda v: curvature.top_eigenpairs(matvec, v, steps, args.top_k))(v0)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: batch_loss(model, loss_fn, p, hypers, batch)[0]))(params)
    result = {
        "inputs": inputs, "loss_name": loss_name, "examples": examples, "activation": activation,
        "x64": bool(args.x64), "num_params": n, "loss": float(loss), "grad_norm": float(global_norm(grads)),
        "top_eigenvalues": [float(v) for v in top.values], "residuals": [float(r) for r in top.residuals],
        "lanczos_steps": steps,
    }  # fmt: skip
    if args.trace:
        tr = jax.jit(lambda k: curvature.hutchinson_trace(matvec, k, args.trace_probes, n, dtype))(key)
        result.update(trace=float(tr.estimate), trace_stderr=float(tr.stderr))
    return result


main = cli.main_wrapper(PROG, run)

if __name__ == "__main__":
    sys.exit(main())
