#!/usr/bin/env bash
# The benchmark on a GPU machine, JSON in benchmarks/ in under 5 minutes (the whole script is bounded).
#
#   bash scripts/gpu_bench.sh                 # writes benchmarks/DATE-gpu.json and prints the tables
#   bash scripts/gpu_bench.sh --keras         # extra flags go to python -m experiments.bench
#
# Needs a CUDA build of jaxlib in the Python it runs ($PYTHON, default .venv/bin/python if present,
# else python3): pip install -U "jax[cuda12]". It refuses to run (exit 1, one line) when JAX sees no
# GPU, so a CPU figure is never filed as a GPU one. Sizes: the full training split per epoch (the
# README's target is 128 models x 5 epochs at batch 32), grids up to 128 models, the curvature grid
# at 1, 16 and 64 models; the sequential figures time 8 models and scale (as on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LIMIT_S=${LIMIT_S:-290}

platform=$("$PYTHON" -c "import jax; print(jax.devices()[0].platform)" 2>/dev/null || echo "none")
if [ "$platform" != "gpu" ]; then
  echo "gpu_bench: JAX sees no GPU (platform: $platform); install a CUDA jaxlib: $PYTHON -m pip install -U 'jax[cuda12]'" >&2
  exit 1
fi
bash scripts/ensure-data.sh >/dev/null
out=benchmarks/$(date -u +%Y-%m-%d)-gpu.json
mkdir -p benchmarks
"$PYTHON" -c "import jax; d = jax.devices(); print(f'gpu_bench: {len(d)} x {d[0].device_kind}')"
timeout "$LIMIT_S" "$PYTHON" -m experiments.bench \
  --models 1,8,32,128 --batch-sizes 32,256 --train-limit 60000 --test-limit 1000 --repeats 3 \
  --sequential-max 8 --gemm-size 8192 --curvature-models 1,16,64 --out "$out" "$@"
echo "gpu_bench: $out"
