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
        pixel_mean, pixel_std = _pixel_mean_std(x)
        shift, scale = pixel_mean, 1.0 / np.where(pixel_std > 0, pixel_std, 1.0)
    elif transform.kind == "minmax":
        lo, hi = float(x.min()), float(x.max())
        half_range = (hi - lo) / 2 if hi > lo else 1.0
        shift, scale = (hi + lo) / 2, 1.0 / half_range
    elif transform.kind == "robust":
        q25, median, q75 = _percentiles(x, (25, 50, 75))
        iqr = q75 - q25 if q75 > q25 else 1.0
        shift, scale = median, 1.0 / iqr
    else:  # parse_transform admits no other kind
        raise AssertionError(transform.kind)
    return AffineConstants(
        shift=np.broadcast_to(np.asarray(shift, np.float32), (dim,)).copy(),
        scale=np.broadcast_to(np.asarray(scale, np.float32), (dim,)).copy(),
    )


def _global_mean_std(x: np.ndarray) -> tuple[float, float]:
    total, total_sq = _power_sums(_value_counts(x), x)
    count = x.size
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return mean, (std if std > 0 else 1.0)


# Images are uint8 almost always, so the statistics come from counts of the 256 values (a pass of
# np.bincount) instead of float64 copies of every pixel: the default study's three fitted
# transforms took 1.84 s of every start-up that way, 0.55 s this way, with the same float32 constants.
def _pixel_counts(x: np.ndarray) -> np.ndarray | None:
    """(D, 256): how often each value occurs at each pixel of uint8 images ``x`` (N, D); None for
    other dtypes. Column by column: np.bincount of all N * D pixels at once would first copy them
    to int64 (376 MB for Fashion-MNIST, 1.1 s against 0.17 s)."""
    if x.dtype != np.uint8:
        return None
    return np.stack([np.bincount(column, minlength=256) for column in np.ascontiguousarray(x.T)])


def _value_counts(x: np.ndarray) -> np.ndarray | None:
    """How often each of the 256 values occurs in uint8 ``x`` (N, D) (None for other dtypes)."""
    counts = _pixel_counts(x)
    return None if counts is None else counts.sum(axis=0)


def _power_sums(counts: np.ndarray | None, x: np.ndarray) -> tuple[float, float]:
    """(sum x, sum x^2): exact from uint8 counts, else chunked float64 sums (no full float64 copy)."""
    if counts is not None:
        values = np.arange(256, dtype=np.int64)
        return float(counts @ values), float(counts @ values**2)  # integers below 2^53: exact
    total = total_sq = 0.0
    for start in range(0, len(x), 8192):
        chunk = x[start : start + 8192].astype(np.float64)
        total += chunk.sum()
        total_sq += np.square(chunk).sum()
    return total, total_sq


def _pixel_mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's mean and (population) standard deviation over the images ``x`` (N, D)."""
    n = len(x)
    counts = _pixel_counts(x) if n <= 10**7 else None  # beyond, n * s2 below could overflow int64
    if counts is None:
        return x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
    values = np.arange(256, dtype=np.int64)
    s1, s2 = counts @ values, counts @ values**2  # exact integers
    # n^2 var = n s2 - s1^2, exact in int64, then rounded once:
    # closer to the true value than numpy's two-pass float64 std (1e-12 apart on Fashion-MNIST,
    # the same float32 constants)
    return s1 / n, np.sqrt((n * s2 - s1 * s1) / float(n) ** 2)


def _percentiles(x: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(x, qs)`` (its default linear method); for uint8 from the value counts."""
    counts = _value_counts(x)
    if counts is None:
        return [float(v) for v in np.percentile(x, qs)]
    ends = np.cumsum(counts)  # the sorted pixels: value v fills positions [ends[v-1], ends[v])
    last = x.size - 1

    def order_statistic(i: int) -> float:
        return float(np.searchsorted(ends, i, side="right"))

    out = []
    for q in qs:
        h = last * (q / 100)
        lo = math.floor(h)
        t = h - lo
        a, b = order_statistic(lo), order_statistic(min(lo + 1, last))
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)  # numpy's lerp, both branches
    return out


def apply_affine(x, shift, scale):
    """``(x - shift) * scale`` in float32; works on numpy and JAX arrays alike."""
    return (x.astype(np.float32) - shift) * scale
