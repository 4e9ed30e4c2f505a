"""The arms of a study: the posts' network and its counterfactuals, found by their static values.

The *base* arm is the second post's network (784-128-10, relu, Adam, Keras' clipped cross-entropy,
Glorot-uniform, batch 32). A counterfactual arm changes one or a few of those static values
(``ARMS``: exact cross-entropy, sigmoid, SGD, the first post's sigmoid + SGD + MSE bundle) or the
width (every one-layer ``hidden`` value the run has). An arm is found in any run: a static value
that is not one of the run's axes is read from its config.json, so a run without programs is the
base arm alone: a static value the run does not vary is checked only where an arm changes it
(the exact-CE arm of a Keras-CE run does not exist), so the base arm of a one-network run is that
network. Within an arm, the other numeric axes (lr,
init scale, ...) are taken at their first value among the arm's settings.

Paired values: ``values(..., inputs)`` is {seed: number} over the arm's models at one transform,
so two arms (or two transforms) pair by seed (``scalelab.stats.paired_difference``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.plots import INPUTS, Key, Settings
from scalelab.config import STATIC_AXES
from scalelab.schema import SEED

BASE = {"hidden": "128", "activation": "relu", "loss_name": "keras-ce", "optimizer": "adam"}
FIELDS = {axis: field for field, axis in STATIC_AXES.items()}  # "loss_name" -> "train.loss"


@dataclass(frozen=True)
class Arm:
    name: str  # how the report names it
    changes: tuple[tuple[str, Any], ...]  # static values that differ from BASE

    @property
    def values(self) -> dict[str, Any]:
        return {**BASE, **dict(self.changes)}


BASE_ARM = Arm("relu + Adam + Keras CE (the posts' network)", ())
CE_ARM = Arm("exact cross-entropy (ce)", (("loss_name", "ce"),))
SIGMOID_ARM = Arm("sigmoid instead of relu", (("activation", "sigmoid"),))
SGD_ARM = Arm("SGD instead of Adam", (("optimizer", "sgd"),))
BUNDLE_ARM = Arm("sigmoid + SGD + MSE (the first post's)", (("activation", "sigmoid"), ("optimizer", "sgd"),
                                                          ("loss_name", "mse")))  # fmt: skip
NAMED_ARMS = (BASE_ARM, CE_ARM, SIGMOID_ARM, SGD_ARM, BUNDLE_ARM)


def width_arm(width: int) -> Arm:
    return BASE_ARM if str(width) == BASE["hidden"] else Arm(f"width {width}", (("hidden", str(width)),))


def config_value(config: Mapping[str, Any], axis: str) -> Any:
    """The run-wide value of a static field that is not an axis, as its column would hold it."""
    section, name = FIELDS[axis].split(".")
    value = config.get(section, {}).get(name)
    return "-".join(map(str, value)) if isinstance(value, list | tuple) else value


def static_value(settings: Settings, key: Key, config: Mapping[str, Any], axis: str) -> Any:
    return settings.value(key, axis) if axis in settings.names else config_value(config, axis)


def arm_keys(settings: Settings, keys: Sequence[Key], config: Mapping[str, Any], arm: Arm) -> list[Key]:
    """The arm's settings among ``keys``: each with the first value of the other numeric axes the arm has."""
    wanted = {a: v for a, v in arm.values.items() if a in settings.names or a in dict(arm.changes)}
    matching = [k for k in keys if all(static_value(settings, k, config, a) == v for a, v in wanted.items())]
    numeric = settings.without(INPUTS)
    other = tuple(a for a in numeric.axes if a.name not in wanted)
    if not matching or not other:
        return settings.ordered(matching)
    rest = Settings(other)
    first = rest.ordered(settings.project(k, rest) for k in matching)[0]
    return settings.ordered(k for k in matching if settings.project(k, rest) == first)


def has_arm(settings: Settings, keys: Sequence[Key], config: Mapping[str, Any], arm: Arm, inputs: str) -> bool:
    return any(settings.value(k, INPUTS) == inputs for k in arm_keys(settings, keys, config, arm))


def values(
    rows: Sequence[Mapping[str, Any]], settings: Settings, config: Mapping[str, Any], arm: Arm, inputs: str, field: str
) -> dict[int, float]:
    """{seed: row[field]} over ``rows`` (one per model: finals, or one epoch's) of the arm at ``inputs``;
    diverged models and non-finite values left out."""
    keys = [k for k in arm_keys(settings, [settings.key(r) for r in rows], config, arm) if
            settings.value(k, INPUTS) == inputs]  # fmt: skip
    if not keys:
        return {}
    out = {}
    for row in rows:
        value = row.get(field)
        if settings.key(row) == keys[0] and not row.get("diverged") and isinstance(value, int | float):
            if math.isfinite(value) and not row.get("skipped"):
                out[int(row[SEED])] = float(value)
    return out


def widths(settings: Settings, keys: Sequence[Key], config: Mapping[str, Any]) -> list[int]:
    """The one-hidden-layer widths of the run, ascending."""
    found = {str(static_value(settings, k, config, "hidden")) for k in keys}
    return sorted(int(w) for w in found if w.isdigit())
