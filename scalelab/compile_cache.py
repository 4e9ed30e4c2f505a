"""JAX's persistent compilation cache for users: a repeated study loads its programs instead of compiling.

The default study's first epoch spends most of its time in XLA compiling the grid's epoch and the
measurement programs (31 s against 10 s for each later epoch on the 2-core CPU); with the cache a
second run of the same study (or one that only changes numbers, not shapes) reads the compiled
executables from disk. ``study.run`` calls ``enable`` unless ``config.engine.compile_cache`` is off
(``--no-compile-cache``).

Where the cache lives, first match wins:

1. JAX's own setting (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config.jax_compilation_cache_dir``),
   left as it is: whoever set it chose on purpose (the tests use one cache per checkout);
2. ``$SCALELAB_CACHE_DIR``;
3. the user cache directory, ``$XDG_CACHE_HOME/scalelab/jax`` (``~/.cache/scalelab/jax``).

XLA keys each entry by the program, the compile options, the backend and the jax/jaxlib versions,
so one directory serves every study, device and version without stale hits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# Programs that compile faster than this are not written: every eager jnp op is a program of its
# own, and thousands of tiny entries would cost more disk reads than they save. 0.2 s still keeps
# the grid's epoch, the measurement and the chunk helpers (0.3-20 s each on the 2-core CPU).
MIN_COMPILE_TIME_S = 0.2
# With a size bound JAX evicts least recently used entries and, through the ``filelock`` package,
# serialises reads and writes between processes (without it a reader can see a half-written entry:
# a clean clone testing beside a working tree once segfaulted on one). The bound needs filelock.
MAX_SIZE_BYTES = 4 * 2**30

_JAX_ENV = {
    "jax_compilation_cache_dir": "JAX_COMPILATION_CACHE_DIR",
    "jax_persistent_cache_min_compile_time_secs": "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "jax_compilation_cache_max_size": "JAX_COMPILATION_CACHE_MAX_SIZE",
}


def default_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$SCALELAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/scalelab/jax``, else ``~/.cache/scalelab/jax``."""
    environ = os.environ if environ is None else environ
    if environ.get("SCALELAB_CACHE_DIR"):
        return Path(environ["SCALELAB_CACHE_DIR"]).expanduser()
    base = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base.expanduser() / "scalelab" / "jax"


def enable(directory: str | Path | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache and returns its directory.

    ``directory`` (default ``default_dir()``) is used only where JAX has no cache directory of its
    own yet. The thresholds are set only where neither ``jax.config`` nor their ``JAX_*``
    environment variables chose them. Returns None, and changes nothing, when the directory cannot
    be created (a read-only home): the cache saves time, it is never worth failing a study for.
    """
    import jax

    current = _jax_option("jax_compilation_cache_dir")
    if current:
        return Path(current)
    path = Path(directory).expanduser() if directory is not None else default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    _set_unless_chosen("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S, 1.0)
    if _has_filelock():
        _set_unless_chosen("jax_compilation_cache_max_size", MAX_SIZE_BYTES, -1)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def enabled_dir() -> Path | None:
    """The directory JAX's persistent cache writes to now, or None when it is off."""
    current = _jax_option("jax_compilation_cache_dir")
    return Path(current) if current else None


def _jax_option(name: str):
    import jax

    return getattr(jax.config, name)  # the option's current value (getattr: jax.config's stubs omit them)


def _set_unless_chosen(name: str, value, jax_default) -> None:
    import jax

    if _JAX_ENV[name] not in os.environ and _jax_option(name) == jax_default:
        jax.config.update(name, value)


def _has_filelock() -> bool:
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True
