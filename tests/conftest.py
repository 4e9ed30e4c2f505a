"""Shared fixtures: small synthetic datasets that are learnable, built in memory or as IDX files."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Many tests (and the subprocesses they start) compile the same small programs: XLA's persistent
# compilation cache, shared through the environment, compiles each once per machine. Set before
# JAX is imported, since JAX reads these at import.
# One cache per checkout: two checkouts testing at once (a clean clone beside a working tree) must
# not read each other's half-written entries (seen: a segfault deserialising one); likewise one per
# pytest-xdist worker (``make test`` runs two, one per core of CI's machine).
_CHECKOUT = hashlib.sha256(str(Path(__file__).resolve().parents[1]).encode()).hexdigest()[:12]
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(tempfile.gettempdir()) / f"scalelab-tests-jax-cache-{_CHECKOUT}-{_WORKER}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def make_images(num: int, num_classes: int = 10, side: int = 8, seed: int = 0):
    """uint8 images whose class sets the bright pixels, plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num).astype(np.uint8)
    prototypes = rng.integers(0, 256, (num_classes, side, side))
    noise = rng.integers(-40, 41, (num, side, side))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx_folder(folder, num_train=256, num_test=64, side=8, gz=True, seed=0):
    """Writes the four Fashion-MNIST-named IDX files of a synthetic dataset into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_images(num_train, side=side, seed=seed)
    test_x, test_y = make_images(num_test, side=side, seed=seed + 1)
    parts = {
        "train-images-idx3-ubyte": train_x, "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x, "t10k-labels-idx1-ubyte": test_y,
    }  # fmt: skip
    for name, array in parts.items():
        payload = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return folder


@pytest.fixture
def tiny_dataset():
    from scalelab.data import Dataset

    train_x, train_y = make_images(200, seed=0)
    test_x, test_y = make_images(50, seed=1)
    return Dataset(
        name="synthetic", train_images=train_x, train_labels=train_y.astype(np.int32),
        test_images=test_x, test_labels=test_y.astype(np.int32), num_classes=10, source="memory",
    )  # fmt: skip


@pytest.fixture
def idx_folder(tmp_path):
    return write_idx_folder(tmp_path / "idx")


MAX_MAPPINGS = 30_000  # of the kernel's vm.max_map_count (65530 by default)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's in-memory compiled programs after a test module once they hold many mappings.

    One pytest process compiles many hundreds of XLA programs, and each keeps its JIT code mapped:
    the whole suite in one process passed the kernel's limit on memory mappings (vm.max_map_count)
    and segfaulted inside a later compile (measured: up to 15k mappings per module, never released).
    Clearing only past a threshold keeps the in-memory hits that make the suite fast.
    """
    yield
    maps = Path("/proc/self/maps")
    if maps.exists() and len(maps.read_text().splitlines()) > MAX_MAPPINGS:
        import jax

        jax.clear_caches()
