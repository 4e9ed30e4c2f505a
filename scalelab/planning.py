"""Planning a grid: a config resolved against its data, before anything touches a device.

``plan_grid`` turns a ``RunConfig`` and a dataset into a ``GridPlan``: the compiled program's
static parts (``grid.Program``), the grid's named axes and models (``scalelab.schema``), the
vmapped constants of every variant (input transform, learning rate, ...) and the uint8 arrays.
``split_chunks`` (in ``grid``) and the memory estimate here decide how many models train at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from scalelab import grid as grid_lib
from scalelab.config import RunConfig
from scalelab.errors import UsageError
from scalelab.losses import get_loss
from scalelab.models import count_params, make_model
from scalelab.optim import make_direction
from scalelab.schema import Axis, ModelId, grid_axes, study_models
from scalelab.train import Hypers
from scalelab.transforms import AffineConstants, fit_affine, parse_transform


@dataclass(frozen=True)
class GridPlan:
    """One program of a study resolved against its data: the compiled program and its constants.

    The engine sees the grid as (S, V): S seeds, and V variants (input transform x lr) per seed;
    model ``s * V + v`` of the grid is ``models[s * V + v]``, which carries the study's index and
    coordinates on every axis of the study (``axes``).
    """

    config: RunConfig  # this program's (no static axes left)
    program: grid_lib.Program
    axes: tuple[Axis, ...]  # the study's
    models: tuple[ModelId, ...]  # this program's
    seeds: tuple[int, ...]
    hypers: Hypers  # numpy, leading axis V
    data: grid_lib.DeviceData  # numpy; put on the device by the caller

    @property
    def num_variants(self) -> int:
        return len(self.hypers.lr)

    @property
    def init_scales(self) -> np.ndarray:
        """Each variant's multiplier of its initial kernels (V,)."""
        return np.asarray([v.get("init_scale", 1.0) for v in variants(self.config)], np.float32)

    @property
    def steps_per_epoch(self) -> int:
        return self.program.num_steps(self.data.train_x.shape[0])


def prepare_arrays(dataset, config: RunConfig):
    """Flattens and limits the dataset: (train_x, train_y, test_x, test_y) as uint8/int32."""
    train_x = dataset.train_images.reshape(len(dataset.train_images), -1)
    test_x = dataset.test_images.reshape(len(dataset.test_images), -1)
    train_y = dataset.train_labels.astype(np.int32)
    test_y = dataset.test_labels.astype(np.int32)
    limit, test_limit = config.data.train_limit, config.data.test_limit
    for name, value, available in (("--train-limit", limit, len(train_x)), ("--test-limit", test_limit, len(test_x))):
        if value is not None and not 0 < value <= available:
            raise UsageError(f"{name} {value} must be between 1 and {available} (the split's size)")
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    if test_limit is not None:
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
    if config.train.batch_size > len(train_x):
        raise UsageError(
            f"--batch-size {config.train.batch_size} is larger than the {len(train_x)} training "
            "examples; lower it or raise --train-limit"
        )
    return train_x, train_y, test_x, test_y


def variants(config: RunConfig) -> list[dict[str, Any]]:
    """Every variant of a single-program config: {axis: value} over its numeric axes, the last fastest."""
    axes = config.numeric_axes()
    return [dict(zip([n for n, _ in axes], values, strict=True)) for values in itertools.product(*(v for _, v in axes))]


def variant_hypers(config: RunConfig, train_x: np.ndarray, fitted: dict[str, AffineConstants] | None = None) -> Hypers:
    """The vmapped constants of every variant (``variants``: transform x lr x ... x init scale), axis V.

    ``fitted``: transforms already fitted to ``train_x`` by name (a study's programs share them).
    Hypers.eps / weight_decay are set only where the grid varies them (else None: the program's own).
    """
    fitted = dict(fitted or {})
    for name in config.grid.inputs:
        fitted.setdefault(name, fit_affine(parse_transform(name), train_x))
    per_variant = variants(config)

    def column(axis: str) -> np.ndarray | None:
        present = any(axis in v for v in per_variant)
        return np.asarray([v[axis] for v in per_variant], np.float32) if present else None

    return Hypers(
        shift=np.stack([fitted[v["inputs"]].shift for v in per_variant]),  # type: ignore[arg-type]
        scale=np.stack([fitted[v["inputs"]].scale for v in per_variant]),  # type: ignore[arg-type]
        lr=column("lr"),  # type: ignore[arg-type]
        eps=column("eps"),  # type: ignore[arg-type]
        weight_decay=column("weight_decay"),  # type: ignore[arg-type]
    )


def make_program(config: RunConfig, num_classes: int) -> grid_lib.Program:
    """The static part of the grid: model, loss, optimiser direction, batch size, patience."""
    return grid_lib.Program(
        model=make_model(config.model.hidden, num_classes, config.model.activation, config.model.init),
        loss_fn=get_loss(config.train.loss),
        direction=make_direction(config.optimizer),
        optimizer=config.optimizer,
        batch_size=config.train.batch_size,
        patience=config.train.patience,
    )


@dataclass(frozen=True)
class StudyPlan:
    """A study: one ``GridPlan`` per program (one, without static axes), on the study's axes."""

    config: RunConfig
    axes: tuple[Axis, ...]
    grids: tuple[GridPlan, ...]

    @property
    def models(self) -> list[ModelId]:
        return [m for g in self.grids for m in g.models]


def plan_study(config: RunConfig, dataset, models_per_block: int | None = None) -> StudyPlan:
    """Every program of ``config`` planned against ``dataset``, the input transforms fitted once."""
    axes, models = grid_axes(config), study_models(config)
    train_x = prepare_arrays(dataset, config)[0]
    fitted = {name: fit_affine(parse_transform(name), train_x) for name in dict(config.numeric_axes())["inputs"]}
    grids, start = [], 0
    for _, single in config.programs():
        count = single.num_models
        grid = plan_grid(
            single, dataset, models_per_block, axes=axes, models=models[start : start + count], fitted=fitted
        )
        grids.append(grid)
        start += count
    return StudyPlan(config, axes, tuple(grids))


def plan_grid(
    config: RunConfig, dataset, models_per_block: int | None = None, *, axes=None, models=None, fitted=None
) -> GridPlan:
    """Everything a single-program run needs before touching the device; ``models_per_block``
    None: the config's (``engine.models_per_block``), else automatic. ``axes``/``models``/``fitted``:
    the study's, when this is one of its programs (``plan_study``)."""
    if config.grid.programs:
        raise ValueError("plan_grid plans one program; use plan_study for a config with static axes")
    train_x, train_y, test_x, test_y = prepare_arrays(dataset, config)
    program = make_program(config, dataset.num_classes)
    if models_per_block is None:
        models_per_block = config.engine.models_per_block
    if models_per_block is None:
        models_per_block = auto_models_per_block(program, train_x.shape[1])
    return GridPlan(
        config=config,
        program=dataclasses.replace(program, models_per_block=models_per_block),
        axes=grid_axes(config) if axes is None else axes,
        models=tuple(study_models(config) if models is None else models),
        seeds=config.grid.seed_values,
        hypers=variant_hypers(config, train_x, fitted),
        data=grid_lib.DeviceData(train_x, train_y, test_x, test_y),
    )


Chunk = tuple[int, slice, slice]  # (program, seed slice, variant slice)


def plan_chunks(study: StudyPlan) -> list[Chunk]:
    """The chunks trained one after another: each program's (seed slice, variant slice) pieces."""
    chunks: list[Chunk] = []
    for g, plan in enumerate(study.grids):
        limit = plan.config.engine.max_models_per_chunk or auto_chunk(plan)
        chunks += [(g, s, v) for s, v in grid_lib.split_chunks(len(plan.seeds), plan.num_variants, limit)]
    return chunks


# What the models stepped together touch at every step (parameters, gradients, two optimiser
# moments, the minibatch and its activations) should stay in the CPU's last-level cache from one
# step to the next. On the 2-core EPYC this was tuned on (32 MiB L3, shared) blocks of ~4 MiB were
# fastest (experiments.bench --models-per-block): 2 default MLPs at batch 32, 1 at batch 256.
CPU_BLOCK_BYTES = 4 * 2**20


def auto_models_per_block(program: grid_lib.Program, input_dim: int) -> int:
    """Models per block on each CPU device; 0 (all at once) on accelerators.

    Blocks are a CPU cache optimisation (each device steps its own share of the grid block by
    block, ``grid.train_steps``). On a GPU every model of the grid runs in parallel.
    """
    if jax.devices()[0].platform != "cpu":
        return 0
    state = 4 * count_params(program.model, input_dim) * 4  # float32 params, grads, two moments
    widths = (*program.model.hidden, program.model.num_classes)
    activations = program.batch_size * (2 * input_dim + 3 * sum(widths)) * 4  # raw + transformed batch, z, a, dz
    return max(1, CPU_BLOCK_BYTES // (state + activations))


def auto_chunk(plan: GridPlan) -> int:
    """How many models fit in half the device's memory (all of them, on most machines)."""
    num_params = count_params(plan.program.model, plan.data.train_x.shape[1])
    per_model = grid_lib.estimate_bytes_per_model(
        num_params, plan.config.model.hidden, plan.program.batch_size, plan.program.eval_chunk
    )
    return max(1, int(0.5 * device_memory_bytes() // per_model))


def device_memory_bytes() -> int:
    """Memory the grid may use: every accelerator's limit (the models are sharded), else the RAM."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) * jax.device_count()
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
