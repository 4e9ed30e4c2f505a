"""Throughput benchmark: one vmapped grid of models against the same models one after another.

    python -m experiments.bench                        # the default study (a few minutes on 2 cores)
    python -m experiments.bench --quick                # a tiny run, well under a minute
    python -m experiments.bench --models 1,8 --batch-sizes 256 --no-curvature --out runs/b.json

Every figure comes from the same process run and is reported against figures of that run: the
machine's float32 GEMM rate (the ceiling), the training throughput of the default MLP
(784-128-10 relu, keras-ce, Adam) on Fashion-MNIST as one vmapped grid and as the same models
trained one at a time, and the time for the top Hessian eigenvalue of many models, vmapped and
one at a time. Conventions:

* A training sample costs ``6 * num_params`` FLOPs (forward 2N, backward 4N: Kaplan et al. 2020,
  eq. 2.1), the convention the figures use. The MLP's step does fewer: nothing needs the gradient
  with respect to the input, so the first layer's backward pass is one matmul, not two
  (``matmul_flops_per_sample``: 4.02 N for 784-128-10). Rates above 100% of the GEMM peak are
  therefore possible, and 6N overstates the real arithmetic rate by ~1.5x. The timed epoch also
  evaluates every model on ``--test-limit`` test examples (the grid's compiled epoch always
  does); that work is in the time but not in the FLOP count.
* ``vmapped_over_sequential`` is a throughput ratio: sequential seconds / vmapped seconds for the
  same models and work (> 1: the vmapped program is faster).
* Each program is compiled ahead of time (``jit(...).lower(...).compile()``, reported as
  ``compile_s``) and run once untimed. All training programs of a batch size (the single-model
  one for the sequential figures, every grid, and with ``--compare-one-device`` the spread grids
  on one device) are then timed *interleaved*, round-robin, with ``jax.block_until_ready``, so
  that load from elsewhere falls on every figure alike, best of ``--repeats`` (more for short
  epochs: at least ``grids.MIN_TIMED_S`` of timed runs).
* ``step_ceiling_gflops`` (per batch size) is the rate of the bare step at the MLP's shapes: the
  forward and backward matmuls, the ReLU and a plain SGD update, for as many models as the grid
  steps together, on random data in one ``lax.scan``. It is what the GEMMs of a minibatch of that
  size can do on this machine; ``frac_of_step_ceiling`` compares training with it.
* The curvature figures use the library's loss and Hessian-vector products on raw pixels with the
  grid's ``/255`` transform inside the loss, as ``scalelab.measure`` does during a run.

The JSON schema is ``scalelab.bench/1`` (``report``). One concern per module:

* ``cli``: the flags and ``run`` (flags -> JSON file and printed tables); ``__main__`` calls it.
* ``settings``: the study's constants, the defaults, ``--quick``'s choices and their checks.
* ``environment``: the host-device request (before JAX starts) and the machine's description.
* ``timing``: best-of-N wall time and the progress lines on stderr.
* ``gemm``: the float32 GEMM peak, the ceiling every rate is a fraction of.
* ``grids``: the benchmarked grids, planned and placed as ``scale_grid`` does, and their
  interleaved timing; the only code that touches the grid engine.
* ``training``: the vmapped-vs-sequential rows per batch size and the FLOP conventions.
* ``step_ceiling``: the bare step's rate at the MLP's shapes.
* ``curvature``: the top Hessian eigenvalue, vmapped vs one model at a time.
* ``keras``: Keras' ``model.fit`` of one model, for reference (``--keras``).
* ``report``: the JSON's assembly, its headline and the printed tables.

``cli``, ``settings``, ``environment``, ``timing`` and ``report`` import no JAX at module level; the
measuring modules do, so import them only after ``environment.request_host_devices`` (``cli.run``
does).
"""

from experiments.bench.cli import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
