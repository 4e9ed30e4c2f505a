"""The grid's model axes spread over every device, by JAX's own partitioner.

The models of a grid never talk to each other, so the (S, V) model axes are embarrassingly
parallel: a 2-D device mesh ``(seeds, variants)`` of shape ``(ds, dv)`` gives each device an
``(S / ds, V / dv)`` block of models. The training steps run under ``jax.shard_map`` over that
mesh (``Program.mesh``; each device steps its own models, in its own cache blocks on a CPU);
evaluation and measurement are ``jax.jit`` of the unchanged functions on inputs placed with
``NamedSharding`` (GSPMD propagates the model-axis sharding through the vmaps). Neither has a
collective. Across hosts the same program runs on every process once
``jax.distributed.initialize()`` has joined them.

On a CPU, ``use_host_cores`` gives JAX one device per core and ``grid_devices`` spreads a grid
over as many of them as hold two or more models each (measured faster than one device using
every core's threads; slower with one model per device).

Placement:  states ``P("seeds", "variants")``, order keys ``P("seeds")``, hypers
``P("variants")``, data replicated ``P()``.

Padding. When ``ds`` does not divide S (or ``dv`` V) the grid is padded with extra seeds
(copies of seed 0's keys) and extra variants (copies of variant 0's hypers, so they stay
finite) whose models start ``stopped``: ``train.train_step`` masks their updates and
``unpad`` drops them. The real models compute what they would on one device, to float32
rounding (XLA blocks a device's smaller batch of models differently; see tests/test_sharding.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from scalelab.errors import UsageError

PyTree = Any

SEEDS, VARIANTS = "seeds", "variants"

# Launchers whose environment jax.distributed.initialize() reads by itself in JAX 0.10
# (jax/_src/clusters): Slurm needs all five variables, Open MPI's mpirun sets the URI.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OMPI_URI, _OMPI_SIZE = "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"


@dataclass(frozen=True)
class GridLayout:
    """How an (S, V) grid is cut over a ``(seed_shards, variant_shards)`` device mesh."""

    num_seeds: int
    num_variants: int
    seed_shards: int
    variant_shards: int

    @property
    def padded_seeds(self) -> int:
        return math.ceil(self.num_seeds / self.seed_shards) * self.seed_shards

    @property
    def padded_variants(self) -> int:
        return math.ceil(self.num_variants / self.variant_shards) * self.variant_shards

    @property
    def num_padding(self) -> int:
        """Models computed only to fill the mesh (frozen, then dropped)."""
        return self.padded_seeds * self.padded_variants - self.num_seeds * self.num_variants


def plan_layout(num_seeds: int, num_variants: int, num_devices: int) -> GridLayout:
    """The mesh ``(ds, dv)``, ``ds * dv = num_devices``, that pads the fewest models.

    Ties go to the larger ``ds``: a seed's variants share its minibatch order, which splitting
    them would place on several devices.
    Every device is used even when the grid has fewer models than devices: padding then fills
    devices that would otherwise idle, at no cost in wall time.
    """
    candidates = [
        GridLayout(num_seeds, num_variants, ds, num_devices // ds)
        for ds in range(1, num_devices + 1)
        if num_devices % ds == 0
    ]
    return min(candidates, key=lambda layout: (layout.num_padding, -layout.seed_shards))


# Host (CPU) devices share the machine's cores. A device with a single model leaves a core to
# padding or to nothing, where one device would have run that model's matmuls on every core:
# measured on 2 cores (batch 32), 2 host devices against 1 gave 0.68x at 1 model, 0.90-0.93x at
# 2, 1.2-1.3x at 4, 1.07x at 8, 1.06x at 21, 1.24x at 32 and 1.18x at 128.
MIN_MODELS_PER_HOST_DEVICE = 2


def grid_devices(num_models: int, devices: Sequence[jax.Device] | None = None) -> list[jax.Device]:
    """The devices (default: all) a grid of ``num_models`` is spread over: every accelerator;
    CPU devices only as many as can hold ``MIN_MODELS_PER_HOST_DEVICE`` models each.

    A multi-host job always uses every device: each process must hold part of the mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    if devices[0].platform != "cpu" or jax.process_count() > 1:
        return devices
    return devices[: max(1, min(len(devices), num_models // MIN_MODELS_PER_HOST_DEVICE))]


def use_host_cores() -> None:
    """Asks JAX for one CPU device per usable core, unless the user chose a count.

    Must run before JAX starts its backends (the entry points call it first); later it changes
    nothing. Harmless with an accelerator: JAX then computes on that, and ``grid_devices``
    takes the accelerators. Set ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` or
    ``JAX_NUM_CPU_DEVICES=N`` to choose another count (1: one device using every core).
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") or jax.config.jax_num_cpu_devices > 0:  # type: ignore[attr-defined]
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # the backends are already up (an entry point called inside a test process)
        pass


def make_mesh(layout: GridLayout, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``(seeds, variants)`` mesh over ``devices`` (default: every device of every process).

    Axes are ``Auto``, so the compiler propagates the shardings of the inputs through
    ``train_epoch`` unchanged (``jax.make_mesh`` defaults to ``Explicit`` axes since JAX 0.7).
    """
    shape = (layout.seed_shards, layout.variant_shards)
    return jax.make_mesh(shape, (SEEDS, VARIANTS), (AxisType.Auto, AxisType.Auto), devices=devices)


def grid_placement(
    num_seeds: int, num_variants: int, devices: Sequence[jax.Device] | None = None
) -> tuple[GridLayout, Mesh]:
    """Where an (S, V) grid trains: its layout and mesh over ``grid_devices`` (or ``devices``).

    The one placement rule for every caller (the runner's chunks, the benchmark's grids), so a
    benchmarked grid is laid out exactly as ``scale_grid`` lays it out.
    """
    devices = grid_devices(num_seeds * num_variants) if devices is None else list(devices)
    layout = plan_layout(num_seeds, num_variants, len(devices))
    return layout, make_mesh(layout, devices)


class GridShardings(NamedTuple):
    """One ``NamedSharding`` per argument of ``grid.train_epoch``."""

    states: NamedSharding
    hypers: NamedSharding
    data: NamedSharding
    order_keys: NamedSharding


def grid_shardings(mesh: Mesh) -> GridShardings:
    return GridShardings(
        states=NamedSharding(mesh, PartitionSpec(SEEDS, VARIANTS)),
        hypers=NamedSharding(mesh, PartitionSpec(VARIANTS)),
        data=NamedSharding(mesh, PartitionSpec()),
        order_keys=NamedSharding(mesh, PartitionSpec(SEEDS)),
    )


def _pad_axis(x, axis: int, size: int) -> np.ndarray:
    """``x`` grown to ``size`` along ``axis`` with copies of its index 0."""
    x = np.asarray(x)
    extra = size - x.shape[axis]
    return np.concatenate([x, np.repeat(np.take(x, [0], axis), extra, axis)], axis) if extra else x


def pad_seeds(tree: PyTree, layout: GridLayout) -> PyTree:
    """Leading seed axis S -> padded S (order keys, init keys); padded seeds reuse seed 0."""
    return jax.tree.map(lambda x: _pad_axis(x, 0, layout.padded_seeds), tree)


def pad_hypers(hypers: PyTree, layout: GridLayout) -> PyTree:
    """Leading variant axis V -> padded V; padded variants reuse variant 0's (finite) hypers."""
    return jax.tree.map(lambda x: _pad_axis(x, 0, layout.padded_variants), hypers)


def pad_states(states, layout: GridLayout):
    """(S, V, ...) ``TrainState`` -> padded (S, V, ...) on the host, padded models ``stopped``.

    A stopped model is a no-op in ``train_step`` and ``end_of_epoch`` (masks, not branches),
    so padding changes no real model; its metrics are garbage (0/0) and ``unpad`` drops them.
    """
    padded = jax.tree.map(lambda x: _pad_axis(_pad_axis(x, 0, layout.padded_seeds), 1, layout.padded_variants), states)
    is_real = np.zeros((layout.padded_seeds, layout.padded_variants), bool)
    is_real[: layout.num_seeds, : layout.num_variants] = True
    status = padded.status._replace(stopped=padded.status.stopped | ~is_real)
    return padded._replace(status=status)


def unpad(tree: PyTree, layout: GridLayout) -> PyTree:
    """Drops the padded models of every (S_pad, V_pad, ...) leaf: states or ``EpochMetrics``.

    Takes host arrays (``to_host``'s output); a global array spanning several hosts has no
    slice any one process could read.
    """
    return jax.tree.map(lambda x: x[: layout.num_seeds, : layout.num_variants], tree)


def place(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Every leaf as a global ``jax.Array`` laid out by ``sharding``.

    Each process passes the same full host value and uploads only the shards its own devices
    hold, so this is right on one host and on many (``jax.device_put`` of a host array to a
    sharding that spans other processes is not).
    """

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree)


def shard_grid(layout: GridLayout, mesh: Mesh, states, hypers, data, order_keys):
    """Pads and places the arguments of ``grid.train_epoch``: (states, hypers, data, order_keys)."""
    shardings = grid_shardings(mesh)
    return (
        place(pad_states(states, layout), shardings.states),
        place(pad_hypers(hypers, layout), shardings.hypers),
        place(data, shardings.data),
        place(pad_seeds(order_keys, layout), shardings.order_keys),
    )


def to_host(tree: PyTree) -> PyTree:
    """Every leaf as a full numpy array on every process (an all-gather across hosts)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _launched_processes(environ: Mapping[str, str]) -> int:
    """How many processes a launcher that JAX recognises started (1 when there is none)."""
    if all(name in environ for name in _SLURM_VARS):
        return int(environ["SLURM_NTASKS"])
    if _OMPI_URI in environ:
        return int(environ.get(_OMPI_SIZE, "1"))
    return 1


def distributed_args(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The arguments for ``jax.distributed.initialize`` that ``environ`` asks for, or None.

    JAX 0.10 reads ``JAX_COORDINATOR_ADDRESS`` itself but takes the process count and id only
    from its arguments or from a launcher it recognises (Slurm's srun, Open MPI's mpirun, Cloud
    TPU, ...); scalelab completes the triple from ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    A job of one process is left alone: initialising would gain nothing, and under srun or
    mpirun JAX would then restrict the process to one local GPU. Cloud TPU pods are not
    detected here (that takes a metadata-server query); JAX documents the call as optional
    there, and the three variables above force it.
    """
    names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    try:
        if all(name in environ for name in names):
            address, count, index = environ[names[0]], int(environ[names[1]]), int(environ[names[2]])
            return {"coordinator_address": address, "num_processes": count, "process_id": index} if count > 1 else None
        if _launched_processes(environ) > 1:
            return {}
    except ValueError as error:
        raise UsageError(f"a process count or id in the environment is not an integer: {error}") from None
    if any(name in environ for name in names):
        raise UsageError(f"set all of {', '.join(names)} for a multi-host run (or launch with srun or mpirun)")
    return None


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Joins the processes of a multi-host job; True when this process is part of one.

    Idempotent, and a no-op on one host. Must run before anything touches a device (JAX
    raises otherwise), so call it first thing in the entry point.
    """
    if jax.distributed.is_initialized():
        return True
    args = distributed_args(os.environ if environ is None else environ)
    if args is None:
        return False
    jax.distributed.initialize(**args)
    return True
