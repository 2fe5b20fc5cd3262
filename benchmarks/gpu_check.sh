#!/usr/bin/env bash
# The GPU check: build in place, run the GPU tests, print the benchmark table and
# save it as data (benchmarks/report.py --save: benchmarks/results/<card>.json, the
# card's latest measurement per case; copied to $OUT).
# Made for one H100/H200 machine with torch + Triton + nvcc and no network;
# finishes inside 8 minutes. Logs and JSON go to $OUT when it is set.
#   bash benchmarks/gpu_check.sh
# Knobs (environment): GPU_TEST_JOBS, GPU_TEST_TIMEOUT (s per test file), HOST_TIMEOUT, REPORT_TIMEOUT (s),
# REPORT_ARGS (report.py's --only / --skip / --no-compiled), CLUSTR_FAST_COMMIT (the commit the
# saved measurements record, where this tree has no git metadata).
# Back on a checkout: copy the card file into benchmarks/results/, then
#   python benchmarks/report.py --render
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d /tmp/clustr_fast_gpu_check.XXXX)}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PY=${PYTHON:-python3}
SECONDS=0
stage() { echo; echo "=== [$SECONDS s] $*"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

stage "build (pip install --no-build-isolation --no-deps -e .)"
if ! timeout 240 $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  echo "editable install failed; falling back to setup.py build_ext --inplace" | tee -a "$OUT/build.log"
  timeout 240 $PY setup.py build_ext --inplace >>"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
grep -A8 "clustr_fast build configuration" "$OUT/build.log" | head -9
$PY -c "import clustr_fast; print('backends:', clustr_fast.backends())" | tee -a "$OUT/gpu.txt"

stage "GPU tests (pytest -m gpu, ${GPU_TEST_JOBS:-8} test files at a time)"
# One pytest process per test file, GPU_TEST_JOBS at a time: Triton's JIT
# compilation is CPU-bound, and the correctness tests share the GPU happily.
SHARDS=$(mktemp -d /tmp/clustr_fast_gpu_tests.XXXX)  # $OUT brings back few files
ls tests/test_*.py | xargs -P "${GPU_TEST_JOBS:-8}" -I{} sh -c \
  'f={}; n=$(basename $f .py); timeout '"${GPU_TEST_TIMEOUT:-200}"' '"$PY"' -m pytest -q -p no:cacheprovider -o addopts="" -m gpu "$f" \
     >"'"$SHARDS"'/$n.log" 2>&1; echo "$n: exit $?"'
cat "$SHARDS"/*.log >"$OUT/gpu_tests.log"
grep -hE "^[0-9]+ (passed|failed|deselected|skipped)|^=+ .*(passed|failed|error|deselected)" "$SHARDS"/*.log
grep -hE "^(FAILED|ERROR)" "$OUT/gpu_tests.log" | head -40

stage "host time of each public call (tools/host_overhead.py)"
timeout ${HOST_TIMEOUT:-90} $PY tools/host_overhead.py --device cuda --reps 200 2>&1 | tee "$OUT/host_overhead.md"

stage "benchmark table (benchmarks/report.py --save)"
STAMP=$(mktemp /tmp/clustr_fast_report_start.XXXX)
# --save merges after every case, so a run cut short by the timeout keeps what it measured
timeout ${REPORT_TIMEOUT:-240} $PY benchmarks/report.py --json "$OUT/report.json" --save ${REPORT_ARGS:-} \
  2>"$OUT/report_progress.log" | tee "$OUT/report.md"
echo "report exit code: ${PIPESTATUS[0]}"
tail -5 "$OUT/report_progress.log"
for f in $(find benchmarks/results -maxdepth 1 -name '*.json' -newer "$STAMP"); do
  cp "$f" "$OUT/" && echo "saved: $f (copied to $OUT)"
done
$PY benchmarks/report.py --render --results-md "$OUT/RESULTS.md" --readme-table "$OUT/readme_table.md" >/dev/null \
  || echo "render failed"
stage "done; logs in $OUT"
