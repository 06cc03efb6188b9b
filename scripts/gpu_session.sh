#!/usr/bin/env bash
# Everything a GPU session has to measure, in one command (the device machine is lent briefly), each step
# under its own time cap so that one slow step cannot use up the others' time:
#   tests  the gpu-marked tests (torch and triton backends on CUDA against the float64 reference)
#   triton tests/test_triton.py compiled on the GPU (on a CPU it runs in Triton's interpreter)
#   bench  benchmarks.layers (triton and torch) and benchmarks.train_step (MLP and CNN) on CUDA
#   ab     benchmarks.layers, triton only: the default forward (variant auto, blocks by layer width), then
#          the chunked and the loop variants forced, each in its own run
#   profile benchmarks.profile_ops: the per-operator CUDA time of the layers and of a CNN training step
#   cifar  benchmarks.train_step on CIFAR-10's VGG7-like network (configs/cifar10_vgg7.toml) with the paper's
#          neuron and with the windowed one, synthetic 32x32x3 inputs, batch $VGG_BATCH (default 128, the
#          config's), $VGG_STEPS steps (default 10): what an epoch of CIFAR-10 would take on this GPU
#   train  $TRAIN_CONFIG on CUDA for seeds 0-2 at once, stopped after $TRAIN_S seconds; the run folders
#          (metrics.jsonl per epoch, results.json if finished, checkpoint.ckpt to --resume from) are
#          packed into $OUT/runs_gpu.tgz. The backend is triton if the triton tests passed, else torch.
# Results go to $OUT (default gpu_out/): at most 8 files, as the device tool returns.
#
# Data: MNIST as gzipped IDX files in data/mnist/ (gitignored; carry it to the device), e.g.
#   mkdir -p data/mnist && for f in ~/.cache/relpsp/mnist/*-ubyte; do gzip -c "$f" > "data/mnist/$(basename "$f").gz"; done
# Usage: [DEVICE=cuda TESTS_S=150 BENCH_S=100 TRAIN_S=180 TOTAL_S=0 TRAIN_CONFIG=...] bash scripts/gpu_session.sh
#        [tests] [triton] [bench] [ab] [profile] [cifar] [train]   (default: tests bench train)
# BENCH_LAYER_IMPLS (default triton,torch) names the layers benchmark implementations of the bench step.
# TOTAL_S > 0 is a deadline for the whole script: each step's cap is cut to the time left (train gets all
# of it, less 20 s to pack the runs). Every step runs even if an earlier one fails; the script exits 1 if
# any command failed or a step was unknown, and the log names each failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
TESTS_S=${TESTS_S:-150}
BENCH_S=${BENCH_S:-100}
TRAIN_S=${TRAIN_S:-180}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/mnist_cnn_flat800_wd2.toml}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the script on a machine without a GPU
PY=${PY:-python3}
TOTAL_S=${TOTAL_S:-0}
mkdir -p "$OUT"
left() {  # seconds a step may use: its cap, cut to the deadline when TOTAL_S is set (at least 1)
  local c=$1
  if [ "$TOTAL_S" -gt 0 ]; then
    local rest=$((TOTAL_S - SECONDS - ${2:-0}))
    [ "$rest" -lt "$c" ] && c=$rest
  fi
  [ "$c" -lt 1 ] && c=1
  echo "$c"
}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 RELPSP_DATA=${RELPSP_DATA:-$PWD/data}
steps=${*:-tests bench train}
log="$OUT/session.log"
status=0
train_backend=${TRAIN_BACKEND:-triton}  # numba for a CPU dry run
check() {  # after a pipeline: record a failure of any command in it
  local codes=("${PIPESTATUS[@]}")
  for c in "${codes[@]}"; do
    if [ "$c" != 0 ]; then
      echo "FAILED ($1): exit codes ${codes[*]}" | tee -a "$log"
      status=1
      return 1
    fi
  done
}
stamp() { echo "=== $1 at $(date -u +%H:%M:%S)" | tee -a "$log"; }
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__)"
  nproc
} 2>&1 | tee "$log"
for step in $steps; do
  case $step in
    tests)
      cap=$(left "$TESTS_S"); stamp "gpu tests (cap ${cap}s)"
      # -W default: a deprecation warning of the machine's own torch/triton is shown, not turned into a failure
      timeout "$cap" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -W default -rA 2>&1 \
        | tee -a "$log"
      if ! check "gpu tests"; then
        # keep training possible: the triton backend only if its own tests passed
        timeout "$(left 120)" "$PY" -m pytest -q -m gpu tests/test_gpu.py -k triton -p no:cacheprovider -W default 2>&1 \
          | tail -3 | tee -a "$log"
        [ "${PIPESTATUS[0]}" = 0 ] || train_backend=torch
      fi
      ;;
    bench)
      cap=$(left "$BENCH_S"); stamp "layers benchmark (cap ${cap}s)"
      timeout "$cap" "$PY" -m benchmarks.layers --device "$DEVICE" --impls "${BENCH_LAYER_IMPLS:-triton,torch}" --repeat 5 \
        --out "$OUT/bench_layers_cuda.json" 2>&1 | tee -a "$log"
      check "layers benchmark"
      cap=$(left "$BENCH_S"); stamp "train_step benchmark (cap ${cap}s)"
      timeout "$cap" "$PY" -m benchmarks.train_step --device "$DEVICE" --backend "$train_backend" --steps 20 \
        --archs 784-800-10,16C5-P2-32C5-P2-800-128-10 --out "$OUT/bench_train_step_cuda.json" 2>&1 | tee -a "$log"
      check "train_step benchmark"
      ;;
    cifar)
      vgg=64C3p1-128C3p1-P2-256C3p1-256C3p1-P2-512C3p1-512C3p1-P2-10
      for k in relpsp window; do
        cap=$(left "$BENCH_S"); stamp "train_step benchmark, VGG7 $k (cap ${cap}s)"
        timeout "$cap" "$PY" -m benchmarks.train_step --device "$DEVICE" --backend "$train_backend" --kernel "$k" \
          --archs "$vgg" --batch "${VGG_BATCH:-128}" --steps "${VGG_STEPS:-10}" \
          --out "$OUT/bench_train_step_vgg7_${k}_cuda.json" 2>&1 | tee -a "$log"
        check "train_step benchmark VGG7 $k"
      done
      ;;
    triton)
      cap=$(left "$TESTS_S"); stamp "triton tests (cap ${cap}s)"
      timeout "$cap" "$PY" -m pytest -q tests/test_triton.py -p no:cacheprovider -W default 2>&1 \
        | tail -15 | tee -a "$log"
      check "triton tests"
      ;;
    ab)
      for v in auto chunked loop; do
        cap=$(left "$BENCH_S"); stamp "layers benchmark, triton $v forward (cap ${cap}s)"
        RELPSP_TRITON_FWD=$v timeout "$cap" "$PY" -m benchmarks.layers --device "$DEVICE" --impls triton \
          --repeat 5 --out "$OUT/bench_layers_$v.json" 2>&1 | tee -a "$log"
        check "layers benchmark $v"
      done
      ;;
    profile)
      cap=$(left "$BENCH_S"); stamp "profile (cap ${cap}s)"
      timeout "$cap" "$PY" -m benchmarks.profile_ops --device "$DEVICE" --backend "$train_backend" \
        --out "$OUT/profile_ops.json" 2>&1 | grep -v "^USDT\|^STAGE" | tee -a "$log"
      check "profile"
      ;;
    train)
      TRAIN_S=$(left "$TRAIN_S" 20)
      stamp "training $TRAIN_CONFIG, seeds 0-2 at once, backend $train_backend (cap ${TRAIN_S}s)"
      name=$(basename "$TRAIN_CONFIG" .toml)
      mkdir -p runs/gpu
      pids=()
      for s in 0 1 2; do
        timeout "$TRAIN_S" "$PY" -m relpsp.cli train "$TRAIN_CONFIG" --device "$DEVICE" --backend "$train_backend" \
          --seed "$s" --threads 4 --no-progress --resume --set train.checkpoint_every=50 --out "runs/gpu/${name}_gpu-seed$s" \
          > "runs/gpu/${name}_gpu-seed$s.log" 2>&1 &
        pids+=($!)
      done
      for i in 0 1 2; do
        wait "${pids[$i]}"
        c=$?
        echo "seed $i: exit $c (124: stopped at the cap; --resume continues it)" | tee -a "$log"
        tail -4 "runs/gpu/${name}_gpu-seed$i.log" | tee -a "$log"
        if [ "$c" != 0 ] && [ "$c" != 124 ]; then status=1; fi
      done
      tar czf "$OUT/runs_gpu.tgz" -C runs gpu
      ;;
    *) echo "unknown step $step" | tee -a "$log"; status=1 ;;
  esac
done
stamp "done, status $status"
exit "$status"
