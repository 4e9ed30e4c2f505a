"""The run directory's schema: the grid's named axes, the models on them, and the typed tables.

A grid is the product of its named axes (today ``seed``, ``inputs`` and ``lr``, in that order;
``grid_axes``). Every model is a ``ModelId``: its flat index in that product and its value on
each axis. Every table of a run directory (``metrics.csv``, ``curvature.csv``, the models of
``summary.json`` and ``spectrum.json``) starts with the ``model`` column and one column per
axis, so readers take the axes from here and never spell them out.

``config.json`` carries ``schema_version`` 2. Version 1 directories (written before the
output/engine config sections existed) have the same tables and axes and are read as they are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalelab.config import STATIC_AXES, RunConfig, static_part
from scalelab.errors import ScalelabError

SEED = "seed"


@dataclass(frozen=True)
class Axis:
    """One named axis of a grid: its values, in order, and their type (int, float or str)."""

    name: str
    values: tuple[Any, ...]
    kind: type

    def parse(self, text: str) -> Any:
        return self.kind(text) if self.kind is not int else int(float(text))


def axis_value(field: str, value: Any) -> Any:
    """A static field's value as its column holds it (a hidden layout ``(128, 64)`` as ``128-64``)."""
    return "-".join(map(str, value)) if field == "model.hidden" else value


INT_FIELDS = ("train.batch_size", "train.epochs", "train.patience")


def static_axes(config: RunConfig) -> tuple[Axis, ...]:
    """One axis per static field the study's programs vary (``grid.programs``), in their order."""
    if not config.grid.programs:
        return ()
    fields = [name for name, _ in static_part(config.grid.programs[0])]
    axes = []
    for name in fields:
        values = tuple(dict.fromkeys(axis_value(name, dict(p)[name]) for p in config.grid.programs))
        axes.append(Axis(STATIC_AXES[name], values, int if name in INT_FIELDS else str))
    return tuple(axes)


def grid_axes(config: RunConfig) -> tuple[Axis, ...]:
    """The axes of ``config``'s study: its static axes, then seed, inputs, lr and the other numeric
    axes it varies (eps, weight_decay; init_scale unless it is the default 1), the last fastest."""
    return (
        *static_axes(config),
        Axis(SEED, config.seed_values, int),
        *(Axis(name, values if name == "inputs" else tuple(map(float, values)), NUMERIC_KINDS[name])
          for name, values in config.numeric_axes()),
    )  # fmt: skip


NUMERIC_KINDS = {"inputs": str, "lr": float, "eps": float, "weight_decay": float, "init_scale": float}


def study_models(config: RunConfig) -> list[ModelId]:
    """Every model of the study: program by program, then seed, inputs, lr (and init scale, fastest).

    Within a program this is the engine's flat order ``s * V + v``. Programs may differ in their
    learning rates (each optimiser's default), so a study need not be the full product of its axes.
    """
    models: list[ModelId] = []
    for program, single in config.programs():
        static = tuple((STATIC_AXES[name], axis_value(name, value)) for name, value in static_part(program))
        names = [a.name for a in grid_axes(single)]
        for values in itertools.product(*(a.values for a in grid_axes(single))):
            models.append(ModelId(len(models), static + tuple(zip(names, values, strict=True))))
    return models


@dataclass(frozen=True)
class ModelId:
    """One model of the grid: its flat index and its value on every axis (``model['lr']``)."""

    index: int
    coords: tuple[tuple[str, Any], ...]

    def __getitem__(self, axis: str) -> Any:
        return dict(self.coords)[axis]

    @property
    def columns(self) -> dict[str, Any]:
        """The identity columns every table starts with: ``model`` and one per axis."""
        return {"model": self.index, **dict(self.coords)}

    @property
    def setting(self) -> tuple[Any, ...]:
        """Its values on every axis but the seed: models that differ only by seed share it."""
        return tuple(value for name, value in self.coords if name != SEED)


def grid_models(axes: Sequence[Axis]) -> list[ModelId]:
    """Every model of the product of ``axes``, the last axis varying fastest."""
    names = [a.name for a in axes]
    return [
        ModelId(i, tuple(zip(names, values, strict=True)))
        for i, values in enumerate(itertools.product(*(a.values for a in axes)))
    ]


def axis_names(axes: Sequence[Axis]) -> tuple[str, ...]:
    return tuple(a.name for a in axes)


def setting_axes(axes: Sequence[Axis]) -> tuple[Axis, ...]:
    """The axes that define a setting: all but the seed (seeds are repetitions of a setting)."""
    return tuple(a for a in axes if a.name != SEED)


# ---------------------------------------------------------------------------- tables

METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "grad_norm", "stopped", "diverged")
FLAG_COLUMNS = ("stopped", "diverged")


def metric_columns(axes: Sequence[Axis]) -> list[str]:
    """The columns of metrics.csv, in order."""
    return ["model", *axis_names(axes), *METRIC_FIELDS]


def parse_metrics_row(row: Mapping[str, str], axes: Sequence[Axis]) -> dict[str, Any]:
    """One metrics.csv row with its columns typed: ints, axis values, bools and floats."""
    kinds = {a.name: a for a in axes}
    out: dict[str, Any] = {}
    for key, text in row.items():
        if key in kinds:
            out[key] = kinds[key].parse(text)
        elif key in ("model", "epoch"):
            out[key] = int(text)
        elif key in FLAG_COLUMNS:
            out[key] = bool(int(text))
        else:
            out[key] = float(text)
    return out


CURVATURE_INTS = {"model", "step"}
CURVATURE_STRS = {"skipped"}


def parse_curvature_value(key: str, text: str | None, axes: Sequence[Axis], where: str) -> Any:
    """One curvature.csv cell: axis values by their axis, model/step as int, skipped as str, else float."""
    text = "" if text is None else text
    kinds = {a.name: a for a in axes}
    if key in CURVATURE_STRS or (key in kinds and kinds[key].kind is str):
        return text
    try:
        value = float(text) if text else math.nan
    except ValueError:
        raise ScalelabError(f"{where}: column {key!r} holds {text!r}, not a number; the file is damaged") from None
    # A skipped row may hold nan even in an int column; it stays a float, and is filtered out later.
    is_int = key in CURVATURE_INTS or (key in kinds and kinds[key].kind is int)
    return int(value) if is_int and value.is_integer() else value


# ---------------------------------------------------------------------------- summary.json

FINAL_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc", "grad_norm")


def final_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each model's row at the last epoch it trained (its stop or divergence epoch, else the last)."""
    by_model: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    finals = []
    for model_rows in by_model.values():
        model_rows = sorted(model_rows, key=lambda r: r["epoch"])
        ended = [r for r in model_rows if r["stopped"] or r["diverged"]]
        finals.append(dict(ended[0] if ended else model_rows[-1]))
    return sorted(finals, key=lambda r: r["model"])


def mean_min_max(values) -> dict[str, float] | None:
    """``{'mean', 'min', 'max'}`` of ``values`` in float64, or None when there are none."""
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return None
    return {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())}


def summarize(rows: Iterable[Mapping[str, Any]], axes: Sequence[Axis]) -> dict[str, Any]:
    """Final values per model, and mean/min/max over seeds per setting (every other axis).

    Aggregates are over the models that did not diverge; ``diverged`` counts the others.
    ``groups`` is keyed by the setting axes' columns (today ``inputs`` and ``lr``).
    """
    finals = final_rows(rows)
    names = axis_names(setting_axes(axes))
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in finals:
        groups.setdefault(tuple(row[n] for n in names), []).append(row)
    per_group = []
    for key, members in groups.items():
        healthy = [r for r in members if not r["diverged"]]
        entry: dict[str, Any] = dict(zip(names, key, strict=True))
        entry.update(models=len(members), diverged=len(members) - len(healthy),
                     stopped=sum(r["stopped"] for r in members))  # fmt: skip
        for name in FINAL_FIELDS:
            entry[name] = mean_min_max([r[name] for r in healthy])
        per_group.append(entry)
    return {"axes": list(names), "models": finals, "groups": per_group}
