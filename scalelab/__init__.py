"""scalelab: why does the scale of the inputs change how a network trains?

The package follows the path the data takes: ``data`` (IDX/TFDS -> uint8 arrays) ->
``transforms`` (/C, z-score, ...) -> ``models`` (Flax MLP) -> ``losses`` -> ``train`` (pure
step and epoch) -> ``grid`` (vmap over the model axis, sharding, chunking) -> ``curvature`` /
``probes`` (analysis of any params) -> ``results`` (run directory I/O).
"""

__version__ = "0.1.0"
