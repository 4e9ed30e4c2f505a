"""Command-line plumbing shared by every ``experiments.*`` and ``analysis.*`` entry point.

Bad input ends as one line on stderr naming the problem and the fix: exit status 2 for usage
errors, 1 for runtime errors, 130 for an interrupted run; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from scalelab.errors import ScalelabError, UsageError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the prog, the problem, a pointer to --help)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        # ``--lr -1e-3``: argparse takes a value that starts with '-' for a flag (only plain negative
        # numbers are exempt), so such a value is glued on (``--lr=-1e-3``) and its own check names it.
        words = list(sys.argv[1:] if args is None else args)
        glued, i = [], 0
        while i < len(words):
            word = words[i]
            if word.startswith("--") and "=" not in word and i + 1 < len(words) and NEGATIVE.match(words[i + 1]):
                glued.append(f"{word}={words[i + 1]}")
                i += 2
            else:
                glued.append(word)
                i += 1
        return super().parse_known_args(glued, namespace)


NEGATIVE = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


def main_wrapper(prog: str, run: Callable[[Sequence[str] | None], int]) -> Callable:
    """Wraps ``run(argv) -> exit code`` so that ScalelabError becomes a one-line message."""

    def main(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in args
        try:
            return run(args)
        except ScalelabError as err:
            if debug:
                raise
            print(f"{prog}: error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130

    return main


def int_list(text: str) -> tuple[int, ...]:
    """``128`` or ``128,128`` -> (128, 128); every entry a positive integer."""
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated whole numbers > 0, e.g. 128,128") from None


def seed_list(text: str) -> tuple[int, ...]:
    """``3,7,11`` or ``0-7`` or ``0-3,10``: whole numbers >= 0 and inclusive ranges."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            first, last = int(low), int(high) if high else int(low)
            if first < 0 or last < first:
                raise ValueError(part)
            seeds.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be seeds >= 0 and ranges, comma-separated, e.g. 3,7,11 or 0-7"
        ) from None
    return tuple(seeds)


def _number_list(ok: Callable[[float], bool], requirement: str, example: str) -> Callable[[str], tuple[float, ...]]:
    """A parser of comma-separated numbers, each satisfying ``ok`` (else "must be a finite number REQUIREMENT")."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated numbers, e.g. {example}") from None
        if not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be a finite number {requirement}")
        return values

    return parse


float_list = _number_list(lambda v: 0 < v < math.inf, "> 0", "1e-3,1e-2")  # learning rates, scales, eps
non_negative_float_list = _number_list(lambda v: 0 <= v < math.inf, ">= 0", "0,1e-2")  # weight decays


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default=None,
        help="dataset: fashion_mnist (default), mnist, idx (any folder of the four IDX files, "
        "given by --data-dir), or tfds:NAME read with tensorflow_datasets.data_source (no download)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=None,
        help="folder with train-images-idx3-ubyte[.gz] etc.; default search: $SCALELAB_DATA_DIR, "
        "/usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist), data/fashion-mnist",
    )  # fmt: skip


def _checked(convert: Callable[[str], Any], what: str, ok: Callable[[Any], bool], requirement: str):
    """A flag parser: ``convert`` the text (else "is not WHAT"), then require ``ok`` of the value."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {requirement}")
        return value

    return parse


positive_int = _checked(int, "a whole number", lambda v: v > 0, "a whole number > 0")
non_negative_int = _checked(int, "a whole number", lambda v: v >= 0, "a whole number >= 0")
positive_float = _checked(float, "a number", lambda v: 0 < v < math.inf, "a finite number > 0")
non_negative_float = _checked(float, "a number", lambda v: 0 <= v < math.inf, "a finite number >= 0")
unit_fraction = _checked(float, "a number", lambda v: 0 <= v < 1, "a number in [0, 1)")  # decay rates (b1, b2)
