"""Configuration as data: one frozen dataclass per concern, written to ``config.json``.

Static fields (they change the compiled program: widths, activation, loss, optimiser kind,
batch size) are kept apart from the grid's numeric axes (input transforms, seeds, learning
rates), which become vmapped arguments. ``--resume`` compares the ``RunConfig`` read back from
a run directory with the one the command line asks for, field by field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from scalelab.errors import ScalelabError
from scalelab.optim import OptimizerConfig

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion_mnist"  # fashion_mnist | mnist | idx | tfds:<name>
    data_dir: str | None = None
    train_limit: int | None = None  # first N training examples, for quick runs
    test_limit: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    init: str = "glorot-uniform"


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "keras-ce"
    epochs: int = 5
    batch_size: int = 32
    patience: int = 0  # Keras EarlyStopping(patience) on the test loss; 0 = off


@dataclass(frozen=True)
class GridConfig:
    """The vmapped axes: every combination of seed x learning rate x input transform is a model."""

    inputs: tuple[str, ...] = ("/1", "/255", "/1000", "zscore", "pixel-zscore", "[-1,1]", "robust")
    seeds: int = 3  # seeds 0..seeds-1
    lrs: tuple[float, ...] = (1e-3,)


@dataclass(frozen=True)
class CurvatureConfig:
    """What is measured on every model while it trains (``curvature.csv``, ``spectrum.json``).

    Measurements run at init, every ``every`` steps within each epoch (0: none in between) and
    after every epoch, on the first ``examples`` training examples, with the training loss. The
    defaults cost roughly half an epoch of training per measurement on the default grid.
    """

    enabled: bool = True
    every: int = 0
    examples: int = 256
    top_k: int = 1
    lanczos_steps: int = 16
    trace_probes: int = 0
    density_probes: int = 2  # stochastic Lanczos quadrature at init, for spectrum.json
    density_steps: int = 32


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ScalelabError(
                f"config.json has schema version {version!r}, this scalelab reads version "
                f"{SCHEMA_VERSION}; re-run the experiment with this version into a new --out"
            )
        try:
            return cls(
                data=DataConfig(**raw["data"]),
                model=_with_tuples(ModelConfig, raw["model"]),
                optimizer=OptimizerConfig(**raw["optimizer"]),
                train=TrainConfig(**raw["train"]),
                grid=_with_tuples(GridConfig, raw["grid"]),
                # Runs written before curvature was recorded measured nothing.
                curvature=CurvatureConfig(**raw.get("curvature", {"enabled": False})),
            )
        except (KeyError, TypeError) as err:
            raise ScalelabError(
                f"config.json is not a scalelab run config ({err}); point at a run directory "
                "written by experiments.scale_grid"
            ) from None


def _with_tuples(cls, raw: dict[str, Any]):
    # JSON has no tuples; the dataclasses are frozen and hashable, so lists come back as tuples.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """Dotted names of the fields that differ, e.g. ``['train.epochs', 'grid.lrs']``."""
    old_flat, new_flat = _flatten(old.to_dict()), _flatten(new.to_dict())
    return sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat
