"""The bare step's rate at the MLP's shapes: matmuls, ReLU and SGD, what a minibatch's GEMMs can do."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from experiments.bench.settings import FLOPS_PER_SAMPLE_PER_PARAM
from experiments.bench.timing import best_time

STEP_CEILING_STEPS = 128


def step_ceiling(
    batch_size: int, num_models: int, num_devices: int, widths: tuple[int, int, int], num_params: int, repeats: int
) -> float:
    """GFLOP/s of the bare training step at these shapes: matmuls, ReLU and SGD, nothing else,
    for ``num_models`` models on each of the first ``num_devices`` devices, on random data in one
    ``lax.scan`` of ``STEP_CEILING_STEPS`` steps, counted as ``6 * num_params`` FLOPs per sample.

    No loss, optimiser state, gather, input transform or bookkeeping: an upper bound for what the
    real step (``train.train_step``) can reach with minibatches of ``batch_size``.
    """
    d, h, c = widths
    models = num_models * num_devices
    mesh = jax.make_mesh((num_devices,), ("models",), devices=jax.devices()[:num_devices])
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (STEP_CEILING_STEPS, models, batch_size, d))
    w1 = jax.random.normal(keys[1], (models, d, h)) * d**-0.5
    w2 = jax.random.normal(keys[2], (models, h, c)) * h**-0.5
    x = jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "models")))  # each device its own models
    w1, w2 = (jax.device_put(w, NamedSharding(mesh, PartitionSpec("models"))) for w in (w1, w2))
    run = jax.jit(_sgd_steps).lower(w1, w2, x).compile()
    jax.block_until_ready(run(w1, w2, x))
    seconds = best_time(lambda: jax.block_until_ready(run(w1, w2, x)), max(3, repeats))
    samples = models * batch_size * STEP_CEILING_STEPS
    return FLOPS_PER_SAMPLE_PER_PARAM * num_params * samples / seconds / 1e9


def _sgd_steps(w1, w2, x):
    """Plain SGD of a one-hidden-layer ReLU MLP per model (leading axis) over ``x``'s steps."""

    def body(weights, xb):
        w1, w2 = weights
        z = jnp.einsum("mbd,mdh->mbh", xb, w1)
        a = jnp.maximum(z, 0)
        dy = jnp.einsum("mbh,mhc->mbc", a, w2) * 1e-3  # stands in for the loss gradient
        dz = jnp.einsum("mbc,mhc->mbh", dy, w2) * (z > 0)
        dw1, dw2 = jnp.einsum("mbd,mbh->mdh", xb, dz), jnp.einsum("mbh,mbc->mhc", a, dy)
        return (w1 - 1e-3 * dw1, w2 - 1e-3 * dw2), None

    return jax.lax.scan(body, (w1, w2), x)[0]
