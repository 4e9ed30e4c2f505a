"""Every program a run compiles lowers for GPUs and TPUs too (``jax.export``; no accelerator needed).

The CPU tests run the same jitted, sharded functions that a GPU or TPU run compiles; this checks
that none of them holds a CPU-only piece (a LAPACK kernel, a host callback) and that the CPU-only
form of the gradient norm stays on the CPU.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalelab import grid as grid_lib
from scalelab import measure, sharding
from scalelab.config import CurvatureConfig, DataConfig, GridConfig, ModelConfig, RunConfig, TrainConfig
from scalelab.runner import compile_programs, plan_grid

CPU_ONLY_MARKERS = ("lapack", "callback", "xla_python_cpu")


@pytest.fixture
def programs(tiny_dataset):
    config = RunConfig(
        data=DataConfig(name="synthetic"),
        model=ModelConfig(hidden=(16, 8)),
        train=TrainConfig(epochs=1, batch_size=16),
        grid=GridConfig(inputs=("/255", "zscore"), seeds=2, lrs=(1e-3,)),
        curvature=CurvatureConfig(examples=32, top_k=2, lanczos_steps=6, trace_probes=2, density_steps=8),
    )
    plan = plan_grid(config, tiny_dataset, models_per_block=0)
    layout = sharding.plan_layout(2, 2, 1)
    program = dataclasses.replace(plan.program, mesh=sharding.make_mesh(layout, jax.devices()[:1]))
    init_keys, order_keys = grid_lib.seed_keys((0, 1))
    states = grid_lib.init_grid(program, init_keys, 2, plan.data.train_x.shape[1])
    data = grid_lib.DeviceData(*(jnp.asarray(a) for a in plan.data))
    hypers = jax.tree.map(jnp.asarray, plan.hypers)
    batch = measure.measurement_batch(plan.data.train_x, plan.data.train_y, config.curvature.examples)
    key = measure.measurement_key(0)
    fns = compile_programs()
    return {
        "epoch": (fns.epoch, (program, states, hypers, data, order_keys, jnp.int32(0))),
        "measure": (fns.measure, (program, config.curvature, config.optimizer, states, hypers, batch, key)),
        "density": (fns.density, (program, config.curvature, states, hypers, batch, key)),
    }


def _lowered(fn, args, platform: str) -> str:
    return jax.export.export(fn, platforms=[platform])(*args).mlir_module()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("name", ["epoch", "measure", "density"])
def test_program_lowers_for_the_accelerator_without_cpu_only_kernels(programs, name, platform):
    fn, args = programs[name]
    module = _lowered(fn, args, platform)
    assert "stablehlo" in module
    assert not [marker for marker in CPU_ONLY_MARKERS if marker in module]


def test_gradient_norm_is_a_matrix_vector_product_on_the_cpu_only(programs):
    """The CPU's matvec form adds one dot per weight matrix (3 here) to the epoch's matmuls."""
    fn, args = programs["epoch"]
    counts = {p: _lowered(fn, args, p).count("stablehlo.dot_general") for p in ("cpu", "cuda", "tpu")}
    assert counts["cuda"] == counts["tpu"]
    np.testing.assert_equal(counts["cpu"] - counts["cuda"], 3)
