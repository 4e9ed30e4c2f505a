"""The ceiling: the machine's float32 GEMM rate, on one device and (CPU) on every host device at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from experiments.bench.timing import best_time


def gemm_peak(size: int, repeats: int) -> dict:
    """float32 ``(n, n) @ (n, n)``, best of ``repeats`` after a warm-up, at JAX's default matmul
    precision: the one training uses (full float32 on CPU; TF32 on recent NVIDIA GPUs).

    With several CPU devices (which share the machine's cores) also one matmul per device at
    once; the peak is the better of the two, so that a grid spread over the host devices is
    measured against what they can do together.
    """
    a, b = jax.random.normal(jax.random.PRNGKey(0), (2, size, size), jnp.float32)
    one_device = _rate(a, b, 1, repeats)
    result = {"size": size, "repeats": repeats, "one_device_gflops": one_device, "all_devices_gflops": None}
    devices = jax.devices()
    if len(devices) > 1 and devices[0].platform == "cpu":
        sharded = NamedSharding(jax.make_mesh((len(devices),), ("devices",), devices=devices), PartitionSpec("devices"))
        a, b = (jax.device_put(jnp.broadcast_to(x, (len(devices), size, size)), sharded) for x in (a, b))
        result["all_devices_gflops"] = _rate(a, b, len(devices), repeats)
    return {**result, "gemm_peak_gflops": max(one_device, result["all_devices_gflops"] or 0.0)}


def _rate(a, b, matmuls: int, repeats: int) -> float:
    """GFLOP/s of ``a @ b`` (``matmuls`` square matmuls of the last two axes' size), compiled and warmed up."""
    size = a.shape[-1]
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(matmul(a, b))
    return matmuls * 2 * size**3 / best_time(lambda: jax.block_until_ready(matmul(a, b)), repeats) / 1e9
