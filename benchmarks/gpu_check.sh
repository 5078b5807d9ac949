#!/usr/bin/env bash
# One-shot GPU check (issue 11): on a machine with an NVIDIA GPU and torch installed, from the repo root:
#   benchmarks/gpu_check.sh OUTDIR
# builds the kernels in place (CUDA required, MAX_JOBS = cores), compiles every Triton kernel for the
# GPU's architecture, runs the CUDA and Triton tests without the interpreter, probes host syncs, side
# streams, tensors past 2^31 elements, the context after a bad id, PIMM training steps (eager and
# torch.compile), compute-sanitizer memcheck on a small run where available, the GPU benchmarks, and
# the CUDA export of every model class;
# writes OUTDIR/summary.json and OUTDIR/summary.md. Each step has a time limit (the whole run fits in
# 8 minutes on an H200, build included); a failing step is recorded and the next one still runs.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
unset TRITON_INTERPRET
: > "$OUT/steps.txt"

# The tests that gpu_check runs (tests/test_cuda_gpu_check.py checks that they exist).
GPU_TESTS=(tests/test_cuda_ops.py tests/test_triton_ops.py tests/test_ops.py tests/test_embedding.py)

# The whole run stays inside GPU_CHECK_SECONDS (default 480: device time is scarce, and a hung step must
# leave room for a rerun): each step's limit is cut to what is left, and a step with under 5 s left is
# not run (exit code 125 in steps.txt).
BUDGET=${GPU_CHECK_SECONDS:-480}
RUN_START=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record exit code and time
  local name=$1 limit=$2 start rc left
  shift 2
  start=$(date +%s)
  left=$(( BUDGET - (start - RUN_START) ))
  if (( left < 5 )); then
    echo "$name 125 0" >> "$OUT/steps.txt"
    echo "not run: the check's ${BUDGET} s were spent" > "$OUT/$name.log"
    echo "gpu_check: $name not run (time budget spent)"
    return 0
  fi
  (( limit > left )) && limit=$left
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name $rc $(( $(date +%s) - start ))" >> "$OUT/steps.txt"
  echo "gpu_check: $name exit $rc ($(( $(date +%s) - start )) s)"
  return 0
}

step env 30 bash -c "nvidia-smi; $PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())'"
ARCH=$($PY -c 'import torch; m, n = torch.cuda.get_device_capability(); print(10 * m + n)' 2>/dev/null || echo 90)
# The Triton compile check needs no build: it runs on one core beside the build.
step triton_compile 150 "$PY" -m pimm_fast.triton.compile_check --arch "$ARCH" --quick --json "$OUT/compile.json" &
COMPILE_PID=$!
step build 150 env MAX_JOBS="$(nproc)" PIMM_FAST_CUDA=1 "$PY" setup.py build_ext --inplace
wait "$COMPILE_PID"
step tests 150 "$PY" -m pytest "${GPU_TESTS[@]}" -q -p no:cacheprovider --junitxml="$OUT/tests.xml" \
  -k "not thread_counts"
step probe 120 "$PY" -m benchmarks.gpu_probe --out "$OUT/probe.json"
if command -v compute-sanitizer > /dev/null; then
  step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -m benchmarks.gpu_probe \
    --out "$OUT/memcheck_probe.json" --sections syncs,side_stream,bad_id_context --small
else
  echo "memcheck 127 0" >> "$OUT/steps.txt"
  echo "compute-sanitizer not found" > "$OUT/memcheck.log"
fi
# Serving (issue 12): every model class exported to a CUDA AOTInductor package, reloaded in a fresh process
# and compared with eager (pimm_fast/export.py --selfcheck).
step export_cuda 150 "$PY" -m pimm_fast.export --selfcheck --device cuda --fast --jobs 4
"$PY" -m benchmarks.gpu_summary "$OUT" > /dev/null
echo "gpu_check: wrote $OUT/summary.md and $OUT/summary.json"
