"""Curvature of saved MLP parameters, so scalelab's numbers can be checked against other tools.

    python -m analysis.curvature --params FILE.npz --inputs /255 --examples 0:512 --top-k 5 \
        --trace --x64 --json OUT.json
    python -m analysis.curvature --run RUN_DIR --epoch 5 [--model 3] --top-k 5 --x64 --json OUT.json

``FILE.npz`` holds Flax-layout arrays ``Dense_0/kernel`` (in, out), ``Dense_0/bias``, ``Dense_1/kernel``,
...; the widths come from the shapes. The loss is the mean softmax cross-entropy on the given
training examples after the input transform. With ``--run RUN_DIR --epoch E`` the parameters come
from ``RUN_DIR/params/epoch_EEE.npz`` (0 = init) and each model's input transform, activation and
data from the run's config; the JSON then holds one result per model.
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


def build_parser() -> cli.Parser:
    p = cli.Parser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, help="npz with Dense_i/kernel and Dense_i/bias arrays")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="a scale_grid run directory (instead of --params)")
    p.add_argument("--epoch", type=cli.non_negative_int, help="with --run: the epoch's saved params (0 = init)")
    p.add_argument("--model", type=cli.non_negative_int, help="with --run: one model (default: every model)")
    p.add_argument("--inputs", default="/255", help="input transform, e.g. /255, zscore, [-1,1] (with --params)")
    p.add_argument("--examples", default="0:512", help="training examples START:STOP (default 0:512)")
    p.add_argument("--activation", default="relu", help="hidden activation (default relu)")
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


def load_flax_npz(path: Path) -> dict:
    """``{'params': {'Dense_i': {'kernel', 'bias'}}}`` from a flat npz, with shapes checked."""
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise ScalelabError(f"{path} not found; pass an .npz of Flax-layout MLP parameters") from None
    except Exception as err:
        raise ScalelabError(f"{path} is not a readable .npz ({type(err).__name__})") from None
    layers: dict[str, dict] = {}
    for key, value in arrays.items():
        match = re.fullmatch(r"(?:params/)?(Dense_\d+)/(kernel|bias)", key)
        if not match:
            raise ScalelabError(f"{path}: unexpected array {key!r}; expected Dense_i/kernel and Dense_i/bias")
        layers.setdefault(match[1], {})[match[2]] = value
    names = sorted(layers, key=lambda n: int(n.split("_")[1]))
    if not names or names != [f"Dense_{i}" for i in range(len(names))]:
        raise ScalelabError(f"{path}: layers must be Dense_0..Dense_L without gaps, found {names}")
    for prev, name in zip(names, names[1:], strict=False):
        if layers[prev]["kernel"].shape[1] != layers[name]["kernel"].shape[0]:
            raise ScalelabError(f"{path}: {prev} outputs do not match {name} inputs")
    return {"params": layers}


def parse_examples(text: str) -> slice:
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or int(match[1]) >= int(match[2]):
        raise UsageError(f"--examples {text!r} must be START:STOP with START < STOP, e.g. 0:512")
    return slice(int(match[1]), int(match[2]))


def run(argv) -> int:
    args = build_parser().parse_args(argv)
    examples = parse_examples(args.examples)
    if (args.params is None) == (args.run is None):
        raise UsageError("give either --params FILE.npz or --run RUN_DIR --epoch E")
    if args.run is not None and args.epoch is None:
        raise UsageError("--run RUN_DIR needs --epoch E (0 = init; see RUN_DIR/params/)")
    import jax

    # A context, not a global switch: callers in the same process (tests, notebooks) keep float32.
    with jax.enable_x64(bool(args.x64)):
        if args.params is not None:
            params, train = load_flax_npz(args.params), _load_train(args)
            one = analyse(params, args.inputs, args.activation, train, examples, args)
            result = {"params": str(args.params), **one}
        else:
            result = analyse_run(args, examples)
    text = json.dumps(result, indent=2)
    if args.json:
        from scalelab.results import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


def _load_train(args):
    from scalelab.data import load_dataset

    dataset = load_dataset(args.data or "fashion_mnist", args.data_dir)
    return dataset.train_images.reshape(len(dataset.train_images), -1), dataset.train_labels


def analyse_run(args, examples: slice) -> dict:
    """Every (or one) model of a run at a saved epoch, each with its own transform."""
    from scalelab.data import load_dataset
    from scalelab.results import RunDir
    from scalelab.runner import plan_grid, prepare_arrays

    run_dir = RunDir.open(args.run)
    config = run_dir.config()
    dataset = load_dataset(config.data.name, config.data.data_dir)
    plan = plan_grid(config, dataset)
    # The transform statistics come from the run's own (possibly limited) training split.
    train = prepare_arrays(dataset, config)[:2]
    models = plan.models if args.model is None else [m for m in plan.models if m.index == args.model]
    if not models:
        raise UsageError(f"--model {args.model}: the run has models 0..{len(plan.models) - 1}")
    results = []
    for m in models:
        params = run_dir.load_params(args.epoch, m.index)
        one = analyse(params, m.inputs, config.model.activation, train, examples, args)
        results.append({"model": m.index, "seed": m.seed, "lr": m.lr, **one})
    return {"run": str(args.run), "epoch": args.epoch, "models": results}


def analyse(params: dict, inputs: str, activation: str, train, examples: slice, args) -> dict:
    """Loss, gradient norm, top eigenpairs (and trace) of one MLP on the given training examples."""
    import jax
    import jax.numpy as jnp

    from scalelab import curvature
    from scalelab.losses import softmax_cross_entropy
    from scalelab.models import make_model
    from scalelab.train import global_norm
    from scalelab.transforms import apply_affine, fit_affine, parse_transform

    dtype = jnp.float64 if args.x64 else jnp.float32
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    layers = params["params"]
    hidden = tuple(int(layers[f"Dense_{i}"]["kernel"].shape[1]) for i in range(len(layers) - 1))
    num_classes = int(layers[f"Dense_{len(layers) - 1}"]["kernel"].shape[1])
    model = make_model(hidden, num_classes, activation, "glorot-uniform")
    train_x, train_y = train
    if examples.stop > len(train_x):
        raise UsageError(f"--examples {args.examples}: the training split has {len(train_x)} examples")
    if layers["Dense_0"]["kernel"].shape[0] != train_x.shape[1]:
        raise ScalelabError(f"Dense_0 takes {layers['Dense_0']['kernel'].shape[0]} inputs, "
                            f"the data has {train_x.shape[1]} pixels")  # fmt: skip
    constants = fit_affine(parse_transform(inputs), train_x)
    x = jnp.asarray(apply_affine(train_x[examples], constants.shift, constants.scale), dtype)
    y = jnp.asarray(train_y[examples], jnp.int32)

    def loss_fn(p):
        return jnp.mean(softmax_cross_entropy(model.apply(p, x), y))

    matvec = curvature.flat_matvec(lambda p, v: curvature.hvp(loss_fn, p, v), params)
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    key = jax.random.PRNGKey(args.seed)
    v0 = jax.random.normal(key, (n,), dtype)
    steps = min(args.lanczos_steps, n)  # a Krylov space cannot exceed the dimension
    top = jax.jit(lambda v: curvature.top_eigenpairs(matvec, v, steps, args.top_k))(v0)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    result = {
        "inputs": inputs, "examples": args.examples, "x64": bool(args.x64),
        "num_params": n, "loss": float(loss), "grad_norm": float(global_norm(grads)),
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
