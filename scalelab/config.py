"""Configuration as data: one frozen dataclass per concern, defaults in one place.

A study is a ``RunConfig``: what data (``DataConfig``), which network (``ModelConfig``), how it
learns (``OptimizerConfig``, ``TrainConfig``), the vmapped grid axes (``GridConfig``), what is
measured while it trains (``CurvatureConfig``), what is written (``OutputConfig``) and how the
engine lays the grid out (``EngineConfig``). It is written to ``config.json`` and read back for
``--resume``; ``--config FILE`` reads the same layout from TOML or JSON.

Each field's command-line flag, parser and help live beside it (``option``), so every entry
point's CLI is generated from these classes (``scalelab.cli.add_config_flags``): a new field is
one edit. Values are checked where a config is built (``__post_init__``), so a bad value is the
same one-line error through the CLI, a config file or ``scalelab.study.run``.

Static fields (they change the compiled program: widths, activation, loss, optimiser kind,
batch size) are kept apart from the grid's numeric axes (input transforms, seeds, learning
rates), which become vmapped arguments.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab import cli
from scalelab.errors import UsageError
from scalelab.optim import DEFAULT_LR, OPTIMIZERS, OptimizerConfig

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # v1 run directories have the same files and the axes (seed, inputs, lr)


def option(default: Any, help: str, *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
           negate: bool = False, free: bool = False, cli: bool = True) -> Any:  # fmt: skip
    """A config field with its command-line flag.

    ``flag``: the flag's name (default ``--field-name``); ``parse``: str -> value (default: the
    default's type); ``negate``: a bool field set False by ``--no-...`` (``flag``); ``free``: a
    field ``--resume`` may change, since it does not change any number the run computes; ``cli``
    False: no flag of its own (``grid.programs``, set through list-valued static flags).
    """
    meta = {"help": help, "flag": flag, "parse": parse, "negate": negate, "free": free, "cli": cli}
    return field(default=default, metadata=meta)


def _input_names(text: str) -> tuple[str, ...]:
    from scalelab.transforms import parse_transforms

    return tuple(t.name for t in parse_transforms(text))


# Fields that change the compiled program and may still be grid axes: each distinct combination
# of their values is one program of the study (``GridConfig.programs``), compiled once, whose
# numeric sub-grid is vmapped as usual. Axis names as the tables' columns spell them (``loss_name``, since
# ``loss`` is a measured column).
STATIC_AXES = {
    "model.hidden": "hidden", "model.activation": "activation", "model.init": "init",
    "train.loss": "loss_name", "train.batch_size": "batch_size", "optimizer.name": "optimizer",
    "train.epochs": "epochs", "train.patience": "patience",
}  # fmt: skip
Program = tuple[tuple[str, Any], ...]  # (("model.activation", "relu"), ("optimizer.name", "adam")): one program
# Numeric fields a program may set for itself (an arm run only at /1 and /255, or with fewer seeds): they
# restrict the study's numeric axes for that program and are no axes of their own.
PROGRAM_GRID_FIELDS = ("grid.inputs", "grid.seeds", "grid.seed_list", "grid.lrs")


@dataclass(frozen=True)
class DataConfig:
    name: str = option(
        "fashion_mnist", flag="--data",
        help="dataset: fashion_mnist, mnist, idx (any folder of the four IDX files, given by --data-dir), or "
        "tfds:NAME read with tensorflow_datasets.data_source (no download)",
    )  # fmt: skip
    data_dir: str | None = option(
        None, parse=str,
        help="folder with train-images-idx3-ubyte[.gz] etc.; default search: $SCALELAB_DATA_DIR, "
        "/usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist), data/fashion-mnist",
    )  # fmt: skip
    train_limit: int | None = option(None, "use the first N training examples", parse=cli.positive_int)
    test_limit: int | None = option(None, "use the first N test examples", parse=cli.positive_int)

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise UsageError(f"unknown dataset {self.name!r}: give its name as text, e.g. fashion_mnist or idx")
        if not (self.data_dir is None or isinstance(self.data_dir, str)):
            raise UsageError(f"--data-dir {self.data_dir!r}: give the folder as text")
        for flag, value in (("--train-limit", self.train_limit), ("--test-limit", self.test_limit)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise UsageError(f"{flag} {value!r} must be a whole number > 0")


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = option((128,), "hidden widths, e.g. 128 or 128,128", parse=cli.int_list)
    activation: str = option("relu", "hidden activation: relu, sigmoid, tanh, gelu, identity")
    init: str = option("glorot-uniform", "kernel initialiser: glorot-uniform (Keras), he-normal, lecun-normal")

    def __post_init__(self):
        from scalelab.models import make_model

        hidden = self.hidden
        if not isinstance(hidden, tuple | list) or not all(
            isinstance(w, int) and not isinstance(w, bool) for w in hidden
        ):
            raise UsageError(f"--hidden {hidden!r}: give the widths as whole numbers > 0, e.g. [128, 128] or 128,128")
        object.__setattr__(self, "hidden", tuple(hidden))
        for flag, value in (("--activation", self.activation), ("--init", self.init)):
            if not isinstance(value, str):
                raise UsageError(f"{flag} {value!r}: give a name, e.g. relu or glorot-uniform")
        make_model(self.hidden, 10, self.activation, self.init)  # names and widths checked once, here


@dataclass(frozen=True)
class TrainConfig:
    loss: str = option(
        "keras-ce", "keras-ce (Keras' clipped cross-entropy), ce (exact, from logits), mse (softmax vs one-hot)"
    )
    epochs: int = option(5, "epochs", parse=cli.positive_int)
    batch_size: int = option(32, "minibatch size (Keras' default)", parse=cli.positive_int)
    patience: int = option(0, "early stopping on the test loss, Keras semantics (0 = off)", parse=cli.non_negative_int)

    def __post_init__(self):
        from scalelab.losses import get_loss

        if not isinstance(self.loss, str):
            raise UsageError(f"--loss {self.loss!r}: give a name: keras-ce, ce or mse")
        get_loss(self.loss)
        for flag, value, low in (("--epochs", self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--patience", self.patience, 0)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(f"{flag} {value!r} must be a whole number >= {low}")


def _numbers(values, flag: str, above: float | None, example: str) -> tuple[float, ...]:
    """A numeric axis's values as floats: finite, each listed once, ``> above`` (or ``>= 0`` when None)."""
    low = above if above is not None else 0.0
    ok = (lambda v: v > low) if above is not None else (lambda v: v >= low)  # noqa: E731
    numbers = isinstance(values, tuple | list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v < float("inf") and ok(v) for v in values
    )
    if not numbers or not values:
        bound = f"> {low:g}" if above is not None else ">= 0"
        raise UsageError(f"{flag} {values!r}: every value must be a finite number {bound}, e.g. {example}")
    out = tuple(float(v) for v in values)
    if len(set(out)) < len(out):
        raise UsageError(f"{flag} lists a value more than once; list each once")
    return out


def check_seed_list(seeds: tuple[int, ...]) -> None:
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise UsageError(f"--seed-list {seeds}: give seeds >= 0, e.g. 3,7,11 or 0-7")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UsageError(f"--seed-list repeats {', '.join(map(str, repeated))}; list each seed once")


def normalize_programs(programs) -> tuple[Program, ...]:
    """Programs as sorted-by-STATIC_AXES tuples of (field, value); from JSON's lists of tables too."""
    out = []
    for program in programs:
        items = dict(program.items() if isinstance(program, Mapping) else program)
        unknown = sorted(set(items) - set(STATIC_AXES) - set(PROGRAM_GRID_FIELDS))
        if unknown:
            raise UsageError(
                f"grid.programs: {unknown[0]!r} is not a static field; they are {', '.join(STATIC_AXES)} "
                f"(and a program may set its own {', '.join(PROGRAM_GRID_FIELDS)})"
            )
        values = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in items.items()}
        out.append(tuple((k, values[k]) for k in (*STATIC_AXES, *PROGRAM_GRID_FIELDS) if k in values))
    statics = [static_part(p) for p in out]
    if len({tuple(k for k, _ in p) for p in statics}) > 1 or (out and not statics[0]):
        raise UsageError("grid.programs: every program must set the same static fields; fill in the missing ones")
    repeated = [p for p in statics if statics.count(p) > 1]
    if repeated:
        raise UsageError(f"grid.programs lists {dict(repeated[0])} more than once; list each program once")
    return tuple(out)


def static_part(program: Program) -> Program:
    """A program's static fields (what it compiles), without the numeric values it sets for itself."""
    return tuple((k, v) for k, v in program if k in STATIC_AXES)


@dataclass(frozen=True)
class GridConfig:
    """The vmapped axes: every combination of seed x input transform x learning rate is a model.

    ``lrs=None`` means the optimiser's default learning rate (``optim.DEFAULT_LR``), resolved
    when the ``RunConfig`` is built, so ``config.json`` always holds the numbers.
    """

    inputs: tuple[str, ...] = option(
        ("/1", "/255", "/1000", "zscore", "pixel-zscore", "[-1,1]", "robust"), parse=_input_names,
        help="comma-separated input transforms: /C with C > 0 (e.g. /1, /255, /1e3), zscore, pixel-zscore, "
        "minmax, robust, [-1,1]",
    )  # fmt: skip
    seeds: int = option(3, "number of seeds, 0..N-1", parse=cli.positive_int)
    seed_list: tuple[int, ...] | None = option(
        None, "these seeds instead of 0..N-1, e.g. 3,7,11 or 0-7 (--seeds then counts them)", parse=cli.seed_list
    )
    lrs: tuple[float, ...] | None = option(
        None, flag="--lr", parse=cli.float_list,
        help="learning rate(s), comma-separated: a grid axis (default: adam/adamw/rmsprop 1e-3, sgd/momentum 1e-2)",
    )  # fmt: skip
    init_scales: tuple[float, ...] = option(
        (1.0,), flag="--init-scale", parse=cli.float_list,
        help="multipliers of the initial weights, comma-separated: a numeric axis (vmapped); with zero biases, "
        "c on the first layer gives at init exactly the pre-activations of inputs x c",
    )  # fmt: skip
    init_scale_layers: str = option(
        "first", "the kernels --init-scale multiplies: first (the first layer's, the input scale's partner) or all"
    )
    epsilons: tuple[float, ...] | None = option(
        None, flag="--eps", parse=cli.float_list,
        help="Adam/RMSprop epsilon (default Keras' 1e-7; optax's own is 1e-8); several, comma-separated, are a "
        "numeric axis (vmapped): eps is where lr_equivalence's reparametrisation breaks",
    )  # fmt: skip
    weight_decays: tuple[float, ...] | None = option(
        None, flag="--weight-decay", parse=cli.non_negative_float_list,
        help="AdamW's decoupled weight decay (default 0.004, Keras'); several, comma-separated, are a numeric axis",
    )  # fmt: skip
    programs: tuple[Program, ...] = option(
        (), cli=False,
        help="static axes: the combinations of static fields the study trains, one compiled program each "
        "(set by list-valued --hidden/--activation/--init/--loss/--batch-size/--optimizer, or in a config file)",
    )  # fmt: skip

    def __post_init__(self):
        from scalelab.transforms import parse_transforms

        if not isinstance(self.inputs, tuple | list) or not all(isinstance(name, str) for name in self.inputs):
            raise UsageError(f'--inputs {self.inputs!r}: give a list of transform names, e.g. ["/1", "/255"]')
        object.__setattr__(self, "inputs", tuple(self.inputs))
        parse_transforms(",".join(self.inputs))  # every name valid, none repeated
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds <= 0:
            raise UsageError(f"--seeds {self.seeds!r} must be a whole number > 0")
        if self.seed_list is not None:  # the seed axis; ``seeds`` counts it
            object.__setattr__(self, "seed_list", tuple(self.seed_list))
            check_seed_list(self.seed_list)
            object.__setattr__(self, "seeds", len(self.seed_list))
        object.__setattr__(self, "programs", normalize_programs(self.programs))
        if self.lrs is not None:
            self._check_lrs()
        object.__setattr__(self, "init_scales", _numbers(self.init_scales, "--init-scale", 0.0, "0.5,1,2"))
        if self.init_scale_layers not in ("first", "all"):
            raise UsageError(f"--init-scale-layers {self.init_scale_layers!r}: choose first or all")
        axes = (("epsilons", "--eps", 0.0, "1e-7,1e-3"), ("weight_decays", "--weight-decay", None, "0,1e-2"))
        for name, flag, low, example in axes:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _numbers(getattr(self, name), flag, low, example))

    def _check_lrs(self) -> None:
        lrs = self.lrs
        numbers = isinstance(lrs, tuple | list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in lrs
        )
        if not numbers or not lrs or not all(0 < v < float("inf") for v in lrs):
            raise UsageError(f"--lr (grid.lrs) {lrs!r}: every value must be a finite number > 0, e.g. 1e-3,1e-2")
        object.__setattr__(self, "lrs", tuple(float(v) for v in lrs))
        repeated = sorted({v for v in self.lrs if self.lrs.count(v) > 1})  # type: ignore[union-attr]
        if repeated:
            raise UsageError(f"--lr lists {', '.join(map(str, repeated))} more than once; list each once")

    @property
    def seed_values(self) -> tuple[int, ...]:
        return self.seed_list if self.seed_list is not None else tuple(range(self.seeds))


@dataclass(frozen=True)
class CurvatureConfig:
    """What is measured on every model while it trains (``curvature.csv``, ``spectrum.json``).

    Measurements run at init, every ``every`` steps within each epoch (0: none in between) and
    after every epoch, on the first ``examples`` training examples, with the training loss. The
    defaults cost roughly half an epoch of training per measurement on the default grid.
    """

    enabled: bool = option(True, "measure nothing while training (no curvature.csv)", flag="--no-curvature",
                           negate=True)  # fmt: skip
    every: int = option(0, "also measure every K steps within each epoch (0: at init and after each epoch)",
                        flag="--curvature-every", parse=cli.non_negative_int)  # fmt: skip
    examples: int = option(256, "measure on the first N training examples", flag="--curvature-examples",
                           parse=cli.positive_int)  # fmt: skip
    top_k: int = option(1, "top Hessian eigenvalues to record", parse=cli.positive_int)
    lanczos_steps: int = option(16, "Lanczos steps per eigenvalue run", parse=cli.positive_int)
    trace_probes: int = option(0, "Hutchinson probes for the Hessian trace, 0 = none", parse=cli.non_negative_int)
    density_probes: int = option(2, "stochastic Lanczos quadrature probes at init (spectrum.json), 0 = none",
                                 parse=cli.non_negative_int)  # fmt: skip
    density_steps: int = option(32, "Lanczos steps per density probe", parse=cli.positive_int)
    # The density figure draws one model per network at init, the first seed's; the density of
    # every seed cost the posts study as much as a third of its measurements.
    density_seeds: int = option(1, "estimate the density for the first N seeds of every setting",
                                parse=cli.positive_int)  # fmt: skip

    def __post_init__(self):
        counts = {"--curvature-every": (self.every, 0), "--curvature-examples": (self.examples, 1),
                  "--top-k": (self.top_k, 1), "--lanczos-steps": (self.lanczos_steps, 1),
                  "--trace-probes": (self.trace_probes, 0), "--density-probes": (self.density_probes, 0),
                  "--density-steps": (self.density_steps, 1), "--density-seeds": (self.density_seeds, 1)}  # fmt: skip
        for flag, (value, low) in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(f"{flag} {value!r} must be a whole number >= {low}")
        if self.top_k > self.lanczos_steps:
            raise UsageError(f"--top-k {self.top_k} needs at least as many --lanczos-steps (now {self.lanczos_steps})")
        if self.trace_probes == 1:
            raise UsageError("--trace-probes 1 gives no standard error; use 0 (no trace) or at least 2")
        if not isinstance(self.enabled, bool):
            raise UsageError(f"curvature.enabled {self.enabled!r} must be true or false")


@dataclass(frozen=True)
class OutputConfig:
    """What a run writes besides its metrics; none of it changes a number."""

    save_params: bool = option(True, "do not keep every epoch's params in params/", flag="--no-save-params",
                               negate=True, free=True)  # fmt: skip
    checkpoint_every: int = option(1, "write metrics and a resumable checkpoint every N epochs",
                                   parse=cli.positive_int, free=True)  # fmt: skip
    report: bool = option(True, "do not write figures and report.md/html at the end", flag="--no-report",
                          negate=True, free=True)  # fmt: skip

    def __post_init__(self):
        for name in ("save_params", "report"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"output.{name} {getattr(self, name)!r} must be true or false")
        if (
            not isinstance(self.checkpoint_every, int)
            or isinstance(self.checkpoint_every, bool)
            or self.checkpoint_every < 1
        ):
            raise UsageError(f"--checkpoint-every {self.checkpoint_every!r} must be a whole number > 0")


@dataclass(frozen=True)
class EngineConfig:
    """How the grid is laid out on the hardware; results are the same for every choice (tested)."""

    max_models_per_chunk: int | None = option(
        None, "train at most this many models at once (default: as many as fit in memory)",
        parse=cli.positive_int, free=True,
    )  # fmt: skip
    models_per_block: int | None = option(
        None, "on a CPU, train N models at a time inside each compiled epoch, so their state stays in cache "
        "(default: about 4 MiB of parameters and optimiser state; 0: all at once)",
        parse=cli.non_negative_int, free=True,
    )  # fmt: skip
    compile_cache: bool = option(
        True, "do not use JAX's persistent compilation cache (in $SCALELAB_CACHE_DIR, default "
        "~/.cache/scalelab/jax), which lets a repeated run skip compiling",
        flag="--no-compile-cache", negate=True, free=True,
    )  # fmt: skip

    def __post_init__(self):
        if not isinstance(self.compile_cache, bool):
            raise UsageError(f"engine.compile_cache {self.compile_cache!r} must be true or false")
        for flag, value, low in (("--max-models-per-chunk", self.max_models_per_chunk, 1),
                                 ("--models-per-block", self.models_per_block, 0)):  # fmt: skip
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise UsageError(f"{flag} {value!r} must be a whole number >= {low}")


# Flags of the optimiser's fields (its class lives in scalelab.optim, beside the update rules).
OPTIMIZER_OPTIONS: dict[str, dict[str, Any]] = {
    "name": {"flag": "--optimizer", "help": f"{', '.join(OPTIMIZERS)} (Keras defaults)"},
    "b1": {"help": "Adam's first-moment decay", "parse": cli.unit_fraction},
    "b2": {"help": "Adam's second-moment decay", "parse": cli.unit_fraction},
    "eps": {"cli": False},  # --eps is grid.epsilons: one value sets this field, several are an axis
    "momentum": {"help": "momentum's decay", "parse": cli.unit_fraction},
    "rho": {"help": "RMSprop's decay", "parse": cli.unit_fraction},
    "weight_decay": {"cli": False},  # --weight-decay is grid.weight_decays, likewise
}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self):
        per_program_lr = any(k == "optimizer.name" for p in self.grid.programs for k, _ in p)
        if self.grid.lrs is None and not per_program_lr:  # with an optimiser axis, each program takes its own
            lrs = (DEFAULT_LR[self.optimizer.name],)
            object.__setattr__(self, "grid", dataclasses.replace(self.grid, lrs=lrs))
        for axis, name in (("epsilons", "eps"), ("weight_decays", "weight_decay")):
            values = getattr(self.grid, axis)
            if values is not None and len(values) == 1:  # one value is the optimiser's own, not an axis
                object.__setattr__(self, "optimizer", dataclasses.replace(self.optimizer, **{name: values[0]}))
                object.__setattr__(self, "grid", dataclasses.replace(self.grid, **{axis: None}))
        for _, single in self.programs():  # builds, and so checks, every program
            single._check_optimizer_axes()

    def _check_optimizer_axes(self) -> None:
        name = self.optimizer.name
        if self.grid.epsilons is not None and name not in ("adam", "adamw", "rmsprop"):
            raise UsageError(f"--eps {','.join(map(str, self.grid.epsilons))}: {name} has no epsilon; "
                             "an eps axis needs adam, adamw or rmsprop")  # fmt: skip
        if self.grid.weight_decays is not None and name != "adamw":
            raise UsageError(f"--weight-decay {','.join(map(str, self.grid.weight_decays))}: {name} has no "
                             "weight decay; a weight-decay axis needs --optimizer adamw")  # fmt: skip

    def programs(self) -> list[tuple[Program, RunConfig]]:
        """(static values, single-program config) of every program of the study, in order.

        A study without static axes is its own single program. A program's own numeric values
        (``PROGRAM_GRID_FIELDS``) replace the study's in its config.
        """
        if not self.grid.programs:
            return [((), self)]
        return [(program, self._program_config(program)) for program in self.grid.programs]

    def _program_config(self, program: Program) -> RunConfig:
        sections: dict[str, dict[str, Any]] = {"grid": {"programs": (), "lrs": self.grid.lrs}}
        for name, value in program:
            section, field_name = name.split(".")
            sections.setdefault(section, {})[field_name] = value
        if "seeds" in sections["grid"] and "seed_list" not in sections["grid"]:
            sections["grid"]["seed_list"] = None  # its own count of seeds: 0..N-1
        return RunConfig.from_dict(sections, self, source="grid.programs")

    def numeric_axes(self) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        """(name, values) of the vmapped axes after the seed, in the engine's order (the last fastest).

        inputs and lr always; eps and weight_decay where the grid varies them; init_scale unless
        it is the default (1,). A study's values are its programs' in order of first use.
        """
        if self.grid.programs:
            per_program = [dict(c.numeric_axes()) for _, c in self.programs()]
            names = dict.fromkeys(name for axes in per_program for name in axes)
            return tuple((n, tuple(dict.fromkeys(v for axes in per_program for v in axes.get(n, ())))) for n in names)
        grid = self.grid
        optional = (("eps", grid.epsilons), ("weight_decay", grid.weight_decays),
                    ("init_scale", None if grid.init_scales == (1.0,) else grid.init_scales))  # fmt: skip
        return (("inputs", grid.inputs), ("lr", self.lrs), *((n, v) for n, v in optional if v is not None))

    @property
    def seed_values(self) -> tuple[int, ...]:
        """The study's seeds: its own, or every program's in order of first use."""
        return tuple(dict.fromkeys(s for _, c in self.programs() for s in c.grid.seed_values))

    @property
    def lrs(self) -> tuple[float, ...]:
        """The learning rates of the study: its own, or every program's in order of first use."""
        if not self.grid.programs and self.grid.lrs is not None:
            return self.grid.lrs
        return tuple(dict.fromkeys(lr for _, c in self.programs() for lr in c.lrs))

    @property
    def num_models(self) -> int:
        return sum(c.grid.seeds * math.prod(len(v) for _, v in c.numeric_axes()) for _, c in self.programs())

    def to_dict(self) -> dict[str, Any]:
        raw = {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}
        raw["grid"]["programs"] = [dict(p) for p in self.grid.programs]  # tables in JSON and TOML
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base: RunConfig | None = None, source: str = "config.json") -> RunConfig:
        """``base`` (default: the defaults) with every value of ``raw`` (config.json's layout).

        A ``schema_version`` other than 1 or 2 is refused; v1 files (no output/engine sections)
        read with those sections' defaults. Unknown sections or fields are refused by name.
        """
        version = raw.get("schema_version", SCHEMA_VERSION)
        if version not in READABLE_VERSIONS:
            raise UsageError(
                f"{source} has schema version {version!r}, this scalelab reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-run the experiment with this version into a new --out"
            )
        base = base or cls()
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        changes = {}
        for name, values in raw.items():
            if name in ("schema_version", "history"):  # history: the epochs of earlier resumes
                continue
            if name not in sections:
                raise UsageError(f"{source}: unknown section {name!r}; sections are {', '.join(sections)}")
            if not isinstance(values, Mapping):
                raise UsageError(f"{source}: section {name!r} must be a table of fields, not {values!r}")
            changes[name] = _section_with(getattr(base, name), values, f"{source}: {name}")
        renamed = "name" in raw.get("optimizer", {}) and changes["optimizer"].name != base.optimizer.name
        grid = raw.get("grid", {})
        optimizer_axis = any(k == "optimizer.name" for p in normalize_programs(grid.get("programs", ())) for k, _ in p)
        if (renamed or optimizer_axis) and "lrs" not in grid:
            # Another optimiser without learning rates gets its own default, as on the command line.
            changes["grid"] = dataclasses.replace(changes.get("grid", base.grid), lrs=None)
        try:
            return dataclasses.replace(base, **changes)
        except TypeError as err:
            raise UsageError(f"{source} is not a scalelab run config ({err})") from None

    def differences(self, other: RunConfig) -> list[str]:
        """Dotted names of the fields that differ and that ``--resume`` must refuse to change."""
        return [name for name in config_differences(self, other) if name not in free_fields()]


def _section_with(section, values: Mapping[str, Any], where: str):
    known = {f.name: f for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r}; fields are {', '.join(known)}")
    typed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return dataclasses.replace(section, **typed)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{where}: {err}") from None


def free_fields() -> set[str]:
    """Dotted names of the fields ``--resume`` may change (``option(free=True)``)."""
    defaults = RunConfig()
    return {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(defaults)
        for f in dataclasses.fields(getattr(defaults, section.name))
        if f.metadata.get("free")
    }


def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted names of the fields that differ, e.g. ``['train.epochs', 'grid.lrs']``."""
    old_flat, new_flat = _flatten(old.to_dict()), _flatten(new.to_dict())
    return sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def read_config_file(path: Path, base: RunConfig | None = None) -> RunConfig:
    """A TOML (``.toml``) or JSON file in config.json's layout (a run's own config.json works).

    Sections and fields may be left out: they keep ``base``'s values (default: the defaults).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read it ({err.strerror}); give a TOML or JSON file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {path} is not text (not UTF-8); give a TOML or JSON file") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise UsageError(f"--config {path} is not valid {kind} ({err}); fix the file") from None
    if not isinstance(raw, dict):
        raise UsageError(f"--config {path} must hold a table of sections (data, model, grid, ...)")
    return RunConfig.from_dict(raw, base, source=f"--config {path}")
