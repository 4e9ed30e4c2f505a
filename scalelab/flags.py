"""Command-line flags generated from the config dataclasses (``scalelab.config``).

Every field of every section of ``RunConfig`` is one flag (named by its ``option``, else
``--field-name``); a flag left out keeps the base config's value, so the order of precedence is
defaults < ``--config FILE`` (or the resumed run's config.json) < a preset such as ``--quick`` <
explicit flags. Adding a field to a config class adds its flag to every entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from scalelab.config import OPTIMIZER_OPTIONS, STATIC_AXES, Program, RunConfig, static_part
from scalelab.errors import UsageError

Overrides = dict[str, dict[str, Any]]  # {section: {field: value}}, config.json's layout


@dataclass(frozen=True)
class Flag:
    section: str
    field: str
    flag: str
    help: str
    parse: Callable[[str], Any] | None
    negate: bool  # a bool field that the flag sets to False

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.field}"

    @property
    def static(self) -> bool:
        """A static field: several values make it an axis of programs (``config.STATIC_AXES``)."""
        return self.dest in STATIC_AXES


def _values(parse: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """``a,b,c`` -> (parse(a), parse(b), parse(c)): the list form of a static flag."""

    def parse_list(text: str) -> tuple[Any, ...]:
        return tuple(parse(part.strip()) for part in text.split(","))

    return parse_list


def config_flags(defaults: RunConfig | None = None) -> Iterator[Flag]:
    """One ``Flag`` per field of every section of ``RunConfig``, in the classes' order."""
    defaults = defaults or RunConfig()
    for section in dataclasses.fields(RunConfig):
        values = getattr(defaults, section.name)
        for f in dataclasses.fields(values):
            meta = {**f.metadata, **(OPTIMIZER_OPTIONS.get(f.name, {}) if section.name == "optimizer" else {})}
            if meta.get("cli") is False:
                continue
            default = getattr(values, f.name)
            parse = meta.get("parse") or (type(default) if isinstance(default, int | float | str) else str)
            yield Flag(section.name, f.name, meta.get("flag") or "--" + f.name.replace("_", "-"),
                       _help(meta.get("help", ""), default, meta.get("negate", False)), parse,
                       bool(meta.get("negate")))  # fmt: skip


def _help(text: str, default: Any, negate: bool) -> str:
    if negate:
        return text
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"{text} (default {default})" if default is not None else text


def add_config_flags(parser: argparse.ArgumentParser, defaults: RunConfig | None = None) -> None:
    """Adds every config flag to ``parser``; each defaults to None (= not given)."""
    groups: dict[str, Any] = {}
    for flag in config_flags(defaults):
        group = groups.setdefault(flag.section, parser.add_argument_group(f"{flag.section} (config section)"))
        if flag.negate:
            group.add_argument(flag.flag, dest=flag.dest, action="store_const", const=False, help=flag.help)
        elif flag.dest == "model.hidden":  # a layout has commas, so layouts are separate words
            group.add_argument(flag.flag, dest=flag.dest, type=flag.parse, nargs="+", metavar="LAYOUT",
                               help=f"{flag.help}; several layouts (128 128,128 512) are a static axis")  # fmt: skip
        elif flag.static:
            assert flag.parse is not None
            group.add_argument(flag.flag, dest=flag.dest, type=_values(flag.parse), metavar=flag.field.upper(),
                               help=flag.help + "; a comma-separated list is a static axis")  # fmt: skip
        else:
            metavar = flag.field.upper().replace("_", "-")
            group.add_argument(flag.flag, dest=flag.dest, type=flag.parse, help=flag.help, metavar=metavar)


def given(args: argparse.Namespace) -> Overrides:
    """The config flags given on the command line, in config.json's layout."""
    out: Overrides = {}
    axes: dict[str, tuple[Any, ...]] = {}
    for flag in config_flags():
        value = getattr(args, flag.dest, None)
        if value is None:
            continue
        if flag.static:  # the list forms: one value is the field, several an axis of programs
            if len(value) > len(set(value)):
                raise UsageError(f"{flag.flag} lists a value more than once; list each once")
            if len(value) > 1:
                axes[flag.dest] = tuple(value)
                continue
            value = value[0]
        out.setdefault(flag.section, {})[flag.field] = value
    if {"seeds", "seed_list"} <= set(out.get("grid", {})):
        raise UsageError("--seeds N and --seed-list S both choose the seeds; give one of them")
    if axes:
        names = list(axes)
        out.setdefault("grid", {})["programs"] = tuple(
            tuple(zip(names, values, strict=True)) for values in itertools.product(*axes.values())
        )
    return out


def merge(*layers: Mapping[str, Mapping[str, Any]]) -> Overrides:
    """Later layers win, field by field; ``--seeds N`` after a seed list means 0..N-1 again."""
    out: Overrides = {}
    for layer in layers:
        for section, values in layer.items():
            out.setdefault(section, {}).update(values)
        grid = layer.get("grid", {})
        if "seeds" in grid and "seed_list" not in grid:
            out["grid"]["seed_list"] = None
    return out


def apply(base: RunConfig, overrides: Mapping[str, Mapping[str, Any]]) -> RunConfig:
    """``base`` with ``overrides``; curvature flags switch curvature on where the base has it off.

    A single value for a field that is a static axis of ``base`` applies to every program: the
    field leaves ``grid.programs`` (``--epochs 1`` on a study whose bundles have their own epochs).
    """
    overrides = merge(overrides)
    if "programs" not in overrides.get("grid", {}):
        programs = _without_fields(base.grid.programs, {f"{s}.{f}" for s, fields in overrides.items() for f in fields})
        if programs != base.grid.programs:
            overrides.setdefault("grid", {})["programs"] = programs
    curvature = overrides.get("curvature", {})
    if curvature and "enabled" not in curvature and not base.curvature.enabled:
        curvature["enabled"] = True
    return RunConfig.from_dict(overrides, base, source="the command line")


def _without_fields(programs: tuple[Program, ...], given: set[str]) -> tuple[Program, ...]:
    """``programs`` less the fields given one value for all; programs they told apart merge (the first
    one's own numeric values win); no programs at all once no static field is left to tell them apart."""
    if {"grid.seeds", "grid.seed_list"} & given:  # either flag chooses every program's seeds
        given = given | {"grid.seeds", "grid.seed_list"}
    kept = [tuple((k, v) for k, v in p if k not in given) for p in programs]
    merged = {static_part(p): p for p in reversed(kept)}  # reversed: the first program with its static part wins
    out = tuple(merged[static_part(p)] for p in dict.fromkeys(static_part(p) for p in kept))
    return out if any(static_part(p) for p in out) else ()


def describe(overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """``--flag value`` text of a preset, for --help."""
    by_dest = {flag.dest: flag for flag in config_flags()}
    parts = []
    for section, values in overrides.items():
        for name, value in values.items():
            flag = by_dest.get(f"{section}.{name}")
            if flag is None:  # a field without a flag of its own (grid.programs)
                parts.append(f"{section}.{name} ({len(value)} entries)" if isinstance(value, tuple) else name)
                continue
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            parts.append(flag.flag if flag.negate else f"{flag.flag} {text}")
    return ", ".join(parts)
