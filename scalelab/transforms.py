"""Input transforms: the axis the whole tool is about.

Every transform here is affine, ``x' = (x - shift) * scale`` with per-pixel ``shift`` and
``scale`` vectors, so a grid of any mix of transforms is *one* compiled program: the transform's
constants are vmapped arguments, and the uint8 data stays on the device once. Statistics come
from the training split only.

Names, as written on the command line:

- ``/C`` for any positive number C: pixels divided by C (``/1`` = raw 0..255, ``/255``, ``/1e3``).
- ``zscore``: global z-score, ``(x - mean) / std`` over all training pixels.
- ``pixel-zscore``: per-pixel z-score; a pixel that never varies gets scale 1 (as scikit-learn's
  StandardScaler does), since dividing by zero would be meaningless.
- ``minmax`` (alias ``[-1,1]``): the training min..max mapped linearly onto [-1, 1].
- ``robust``: ``(x - median) / IQR`` over all training pixels (Iglewicz 1983, the accepted
  answer's "robust estimators of location and scale").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from scalelab.errors import UsageError

CENTRED_KINDS = ("zscore", "pixel-zscore", "minmax", "robust")
_ALIASES = {"[-1,1]": "minmax", "pixel_zscore": "pixel-zscore", "z-score": "zscore"}
VALID_FORMS = "/C with C > 0 (e.g. /1, /255, /1e3), " + ", ".join(CENTRED_KINDS) + ", [-1,1]"


@dataclass(frozen=True)
class InputTransform:
    """A named input transform; ``divisor`` is set only for the ``/C`` kind."""

    name: str
    kind: str
    divisor: float | None = None


@dataclass(frozen=True)
class AffineConstants:
    """``x' = (x - shift) * scale``; both float32 vectors of length D (pixels per image)."""

    shift: np.ndarray
    scale: np.ndarray


def parse_transform(name: str) -> InputTransform:
    """Parses one transform name; raises UsageError listing the valid forms."""
    text = name.strip()
    if text.startswith("/"):
        try:
            divisor = float(text[1:])
        except ValueError:
            raise UsageError(
                f"input transform {name!r}: {text[1:]!r} is not a number; valid forms: {VALID_FORMS}"
            ) from None
        if not math.isfinite(divisor) or divisor <= 0:
            raise UsageError(
                f"input transform {name!r}: the divisor must be a finite number > 0; valid forms: {VALID_FORMS}"
            )
        return InputTransform(name=text, kind="divide", divisor=divisor)
    kind = _ALIASES.get(text, text)
    if kind not in CENTRED_KINDS:
        raise UsageError(f"unknown input transform {name!r}; valid forms: {VALID_FORMS}")
    return InputTransform(name=text, kind=kind)


def parse_transforms(text: str) -> tuple[InputTransform, ...]:
    """Parses a comma-separated list such as ``/1,/255,/1000,zscore,[-1,1]``.

    ``[-1,1]`` contains a comma, so it is recognised before splitting.
    """
    parts = re.split(r",(?![^\[]*\])", text)
    if not text.strip() or any(not p.strip() for p in parts):
        raise UsageError(f"--inputs {text!r} has an empty entry; give a comma-separated list of {VALID_FORMS}")
    transforms = tuple(parse_transform(p) for p in parts)
    names = [t.name for t in transforms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--inputs lists {', '.join(duplicates)} more than once; list each once")
    return transforms


def fit_affine(transform: InputTransform, train_images: np.ndarray) -> AffineConstants:
    """Computes the transform's constants from the training images (uint8, (N, ...))."""
    x = np.asarray(train_images).reshape(len(train_images), -1)
    dim = x.shape[1]
    shift: float | np.ndarray
    scale: float | np.ndarray
    if transform.kind == "divide":
        assert transform.divisor is not None  # parse_transform sets it for this kind
        shift, scale = 0.0, 1.0 / transform.divisor
    elif transform.kind == "zscore":
        mean, std = _global_mean_std(x)
        shift, scale = mean, 1.0 / std
    elif transform.kind == "pixel-zscore":
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        shift, scale = mean, 1.0 / np.where(std > 0, std, 1.0)
    elif transform.kind == "minmax":
        lo, hi = float(x.min()), float(x.max())
        half_range = (hi - lo) / 2 if hi > lo else 1.0
        shift, scale = (hi + lo) / 2, 1.0 / half_range
    elif transform.kind == "robust":
        q25, median, q75 = np.percentile(x, [25, 50, 75])
        iqr = q75 - q25 if q75 > q25 else 1.0
        shift, scale = median, 1.0 / iqr
    else:  # parse_transform admits no other kind
        raise AssertionError(transform.kind)
    return AffineConstants(
        shift=np.broadcast_to(np.asarray(shift, np.float32), (dim,)).copy(),
        scale=np.broadcast_to(np.asarray(scale, np.float32), (dim,)).copy(),
    )


def _global_mean_std(x: np.ndarray) -> tuple[float, float]:
    # Chunked float64 sums: the full float64 copy of 60k x 784 pixels would be 376 MB.
    total = total_sq = 0.0
    for start in range(0, len(x), 8192):
        chunk = x[start : start + 8192].astype(np.float64)
        total += chunk.sum()
        total_sq += np.square(chunk).sum()
    count = x.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return mean, (std if std > 0 else 1.0)


def apply_affine(x, shift, scale):
    """``(x - shift) * scale`` in float32; works on numpy and JAX arrays alike."""
    return (x.astype(np.float32) - shift) * scale
