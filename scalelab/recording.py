"""Recording: a chunk's compiled outputs turned into table rows and files.

``epoch_rows`` makes the metrics rows of an epoch, ``Recorder`` measures a chunk's models
(``measure.measure_grid``, ``measure.density_grid``) and makes the curvature rows, and
``save_params`` adds the chunk's parameters to ``params/epoch_EEE.npz``. Every row starts with
the model's identity columns (``schema.ModelId.columns``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from scalelab import grid as grid_lib
from scalelab import measure, sharding
from scalelab.models import count_params
from scalelab.planning import GridPlan
from scalelab.results import RunDir
from scalelab.schema import ModelId
from scalelab.train import Hypers


@dataclass
class ChunkRun:
    """One chunk of the grid on the device: its coordinates, keys and constants."""

    index: int
    coords: tuple[slice, slice]
    order_keys: jax.Array  # placed on the mesh, padded
    hypers: Hypers  # placed on the mesh, padded
    layout: sharding.GridLayout
    program: grid_lib.Program  # the plan's, on the chunk's mesh
    plan: GridPlan  # the program of the study this chunk belongs to

    def host(self, tree):
        """A (padded, sharded) grid pytree as numpy arrays of the chunk's real (S_c, V_c) models."""
        return sharding.unpad(sharding.to_host(tree), self.layout)


def chunk_models(plan: GridPlan, coords: tuple[slice, slice]) -> Iterator[tuple[int, int, ModelId]]:
    """(i, j, ModelId) for a chunk's models, (i, j) their place in the chunk's (S_c, V_c) axes."""
    seed_slice, variant_slice = coords
    num_variants = plan.num_variants
    models = plan.models
    for i, s in enumerate(range(len(plan.seeds))[seed_slice]):
        for j, v in enumerate(range(num_variants)[variant_slice]):
            yield i, j, models[s * num_variants + v]


def epoch_rows(plan: GridPlan, coords, epoch: int, metrics: grid_lib.EpochMetrics) -> list[dict[str, Any]]:
    """Turns one chunk's (S_c, V_c) metrics into rows (epoch is 1-based, as Keras prints it)."""
    m = grid_lib.to_numpy(metrics)
    return [
        {
            **model.columns, "epoch": epoch + 1,
            "train_loss": float(m.train_loss[i, j]), "train_acc": float(m.train_acc[i, j]),
            "test_loss": float(m.test_loss[i, j]), "test_acc": float(m.test_acc[i, j]),
            "grad_norm": float(m.grad_norm[i, j]),
            "stopped": bool(m.stopped[i, j]), "diverged": bool(m.diverged[i, j]),
        }
        for i, j, model in chunk_models(plan, coords)
    ]  # fmt: skip


def measuring_placement(chunk: ChunkRun, tree):
    """``tree`` where the chunk's curvature is measured: on its devices, unless they are several CPUs.

    Then everything moves to the first of them. jaxlib's CPU ``eigh`` (LAPACK syevd, batched
    over models) waits for pieces of its batch that it queues on the intra-op thread pool, which
    all host devices share; two devices inside ``eigh`` at once can each hold a pool thread
    waiting for work queued behind the other, and hang (reproduced with 2 host devices and a
    batch of 64x64 matrices). One CPU device still measures on every core.
    """
    assert chunk.program.mesh is not None  # every chunk is placed on a mesh
    devices = chunk.program.mesh.devices.flat
    if len(devices) == 1 or devices[0].platform != "cpu" or jax.process_count() > 1:
        return tree
    return jax.device_put(tree, devices[0])


class Recorder:
    """Measures a chunk's models (``measure.measure_grid``) and turns the numbers into rows."""

    def __init__(self, plan: GridPlan, measure_fn, density_fn, run_dir: RunDir | None):
        self.plan, self.measure_fn, self.density_fn, self.run_dir = plan, measure_fn, density_fn, run_dir
        settings = plan.config.curvature
        self.batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, settings.examples)
        self.num_hidden = len(plan.config.model.hidden)
        num_params = count_params(plan.program.model, plan.data.train_x.shape[1])
        self.block = measure.measure_block(settings, num_params, jax.devices()[0].platform)

    def measure(self, chunk: ChunkRun, state, step: int, epoch: float) -> list[dict[str, Any]]:
        config = self.plan.config
        state, hypers = measuring_placement(chunk, (state, chunk.hypers))
        m = self.measure_fn(
            self.plan.program, config.curvature, config.optimizer, state, hypers, self.batch,
            measure.measurement_key(step), block=self.block, after_updates=np.bool_(step > 0),
        )  # fmt: skip
        m, status = chunk.host(m), chunk.host(state.status)
        rows = []
        for i, j, model in chunk_models(self.plan, chunk.coords):
            reason = measure.skip_reason(bool(status.diverged[i, j]), int(status.diverge_epoch[i, j]))
            numbers = measure.model_numbers(jax.tree.map(lambda x, i=i, j=j: x[i, j], m), self.num_hidden)
            if reason:
                numbers = dict.fromkeys(numbers, float("nan"))
            rows.append({
                **model.columns, "epoch": float(epoch), "step": int(step), "skipped": reason,
                **numbers, **measure.thresholds(config.optimizer, model["lr"]),
            })  # fmt: skip
        return rows

    def record_density(self, chunk: ChunkRun, state) -> None:
        """The spectral density at init of the chunk's models among the first ``density_seeds``
        seeds of their program (a prefix of the chunk's seeds, or none of them)."""
        settings = self.plan.config.curvature
        if self.run_dir is None or jax.process_index() != 0 or settings.density_probes < 1:
            return
        positions = range(len(self.plan.seeds))[chunk.coords[0]]
        keep = sum(1 for p in positions if p < settings.density_seeds)
        if keep == 0:
            return
        state, hypers = measuring_placement(chunk, (jax.tree.map(lambda x: x[:keep], state), chunk.hypers))
        key = measure.measurement_key(0)
        nodes, weights = chunk.host(
            self.density_fn(self.plan.program, settings, state, hypers, self.batch, key, block=self.block)
        )
        entries = [
            {**model.columns, "nodes": nodes[i, j].tolist(), "weights": weights[i, j].tolist()}
            for i, j, model in chunk_models(self.plan, chunk.coords)
            if i < keep
        ]
        self.run_dir.add_spectrum(entries)


def save_params(run_dir: RunDir | None, plan: GridPlan, chunk: ChunkRun, state, epoch: int) -> None:
    """Every model's params after ``epoch`` (0 = init) into ``params/epoch_EEE.npz``."""
    if run_dir is None:
        return
    params = chunk.host(state.params)
    per_model = {
        m.index: jax.tree.map(lambda x, i=i, j=j: np.asarray(x[i, j]), params)
        for i, j, m in chunk_models(plan, chunk.coords)
    }
    run_dir.save_params(epoch, per_model)
