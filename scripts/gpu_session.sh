#!/usr/bin/env bash
# Everything a GPU session has to measure, in one command (the device machine is lent briefly):
#   the gpu-marked tests, the layer and training-step benchmarks on CUDA, and the MNIST CNN training run.
# Results go to $OUT (default gpu_out/): at most 8 files, as the device tool returns.
#
# Data: MNIST as gzipped IDX files in data/mnist/ (gitignored; carry it to the device), e.g.
#   mkdir -p data/mnist && for f in ~/.cache/relpsp/mnist/*-ubyte; do gzip -c "$f" > "data/mnist/$(basename "$f").gz"; done
# Usage: bash scripts/gpu_session.sh [tests] [bench] [cnn]   (default: all three)
# Every step runs even if an earlier one fails (the machine is lent briefly); the script exits 1 if any
# command failed or a step was unknown, and the log names each failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 RELPSP_DATA=${RELPSP_DATA:-$PWD/data}
steps=${*:-tests bench cnn}
log="$OUT/session.log"
status=0
check() {  # after a pipeline: record a failure of any command in it
  local codes=("${PIPESTATUS[@]}")
  for c in "${codes[@]}"; do
    if [ "$c" != 0 ]; then
      echo "FAILED ($1): exit codes ${codes[*]}" | tee -a "$log"
      status=1
      return
    fi
  done
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$log"
for step in $steps; do
  case $step in
    tests)
      python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee -a "$log"; check "gpu tests"
      python3 -m pytest -q tests/test_triton.py 2>&1 | tee -a "$log"; check "triton tests"
      ;;
    bench)
      python3 -m benchmarks.layers --device cuda --impls triton,torch --out "$OUT/bench_layers_cuda.json" 2>&1 | tee -a "$log"
      check "layers benchmark"
      python3 -m benchmarks.train_step --device cuda --backend triton --steps 20 \
        --archs 784-800-10,16C5-P2-32C5-P2-800-128-10,64C3p1-128C3p1-P2-256C3p1-256C3p1-P2-512C3p1-512C3p1-P2-10 \
        --out "$OUT/bench_train_step_cuda.json" 2>&1 | tee -a "$log"
      check "train_step benchmark"
      ;;
    cnn)
      python3 -m relpsp.cli train configs/mnist_cnn.toml --device cuda --no-progress --out "$OUT/mnist_cnn_gpu-seed0" 2>&1 \
        | tee -a "$log"
      codes=("${PIPESTATUS[@]}")
      if [ "${codes[0]}" != 0 ]; then echo "FAILED (cnn training): exit ${codes[0]}" | tee -a "$log"; status=1; fi
      ;;
    *) echo "unknown step $step" | tee -a "$log"; status=1 ;;
  esac
done
exit "$status"
