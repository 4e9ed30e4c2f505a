"""The machine a report was measured on, and the host-device request that must precede JAX's start.

Nothing here imports JAX at module level: ``request_host_devices`` sets XLA_FLAGS first.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime


def request_host_devices(count: int | None) -> bool:
    """Sets XLA_FLAGS for ``count`` host devices (None: one per core, as scale_grid); returns
    whether JAX was already imported.

    If it was (e.g. in a test process), the count only takes effect if JAX's backend has not
    started yet; ``describe`` records the device count JAX actually reports.
    """
    preloaded = "jax" in sys.modules
    if count is not None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    else:
        from scalelab.sharding import use_host_cores

        use_host_cores()
    return preloaded


def describe(host_devices: int | None, jax_preloaded: bool) -> dict:
    """The report's ``environment``: versions, devices, flags, CPUs and the load at the start."""
    import jax
    import jaxlib

    device = jax.devices()[0]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "host_devices_requested": host_devices,
        "jax_imported_before_flags": jax_preloaded,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_start": list(os.getloadavg()),
    }
