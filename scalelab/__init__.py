"""scalelab: why does the scale of the inputs change how a network trains?

The package follows the path the data takes: ``data`` (IDX/TFDS -> uint8 arrays) ->
``transforms`` (/C, z-score, ...) -> ``models`` (Flax MLP) -> ``losses`` -> ``train`` (pure
step) -> ``grid`` (the epoch, vmapped over the model axis, sharded, in chunks) -> ``curvature`` /
``probes`` / ``measure`` (analysis of any params) -> ``results`` / ``schema`` (the run directory).
Around it: ``config`` (one frozen dataclass per concern) and ``flags`` (the CLI generated from
them), ``planning``, ``runner``, ``recording`` and ``checkpointing`` (the host loop), and
``study`` (``run(config)`` and ``load(run_dir)``, the entry points for code and notebooks).
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``scalelab.load`` without importing JAX for ``import scalelab`` (the CLIs answer --help fast).
    if name == "load":
        from scalelab.study import load

        return load
    raise AttributeError(f"module 'scalelab' has no attribute {name!r}")
