#!/usr/bin/env bash
# The project on the GPU machine's versions (torch 2.11, Triton 3.6: docs/architecture.md,
# "Tests, benchmarks, GPU checks"), without a GPU: a mismatch found here does not cost the GPU
# machine's scarce minutes.
# In a venv over the installed packages (build/gpu-versions/venv) with torch==2.11.0,
# triton==3.6.0 and numpy<2.3 in place of the installed ones, on a copy of the tracked tree
# (build/gpu-versions/src), it
#   1. builds the CPU extension against torch 2.11;
#   2. runs the whole default test suite: the Triton tests under the Triton 3.6 interpreter,
#      and tests/test_sass_rules.py, which compiles every Triton kernel for sm_90a with the
#      3.6 compiler;
#   3. with nvcc present, compiles every csrc/cuda/*.cu for sm_90 against torch 2.11's headers.
# numpy<2.3: Triton 3.6's interpreter converts 1-element arrays to Python ints, which NumPy 2.4
# refuses ("only 0-dimensional arrays can be converted to Python scalars").
#   scripts/gpu_versions_check.sh [pytest args]        (make test-gpu-versions)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${GPU_TORCH_VERSION:-2.11.0}
TRITON_VERSION=${GPU_TRITON_VERSION:-3.6.0}
WORK=${GPU_VERSIONS_DIR:-$PWD/build/gpu-versions}
VENV=$WORK/venv SRC=$WORK/src
SECONDS=0
say() { echo "gpu-versions [$SECONDS s]: $*"; }

# --without-pip: the venv then also uses the installed setuptools (>= 77, which the build needs)
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages --without-pip "$VENV"
"$PY" -m pip --python "$VENV/bin/python" install -q --disable-pip-version-check --no-deps \
  "torch==$TORCH_VERSION" "triton==$TRITON_VERSION" "numpy<2.3"
"$VENV/bin/python" - "$TORCH_VERSION" "$TRITON_VERSION" <<'PY'
import sys, torch, triton
print("gpu-versions: torch", torch.__version__, "triton", triton.__version__, "from", torch.__file__)
if torch.__version__.split("+")[0] != sys.argv[1] or triton.__version__ != sys.argv[2]:
    sys.exit(f"gpu-versions: the venv imports torch {torch.__version__} and Triton {triton.__version__}, "
             f"not {sys.argv[1]} and {sys.argv[2]}")
PY

say "copying the tracked tree to $SRC"
rm -rf "$SRC" && mkdir -p "$SRC"
git ls-files -z | xargs -0 cp -P --parents -t "$SRC"  # no built extension: it is not tracked

say "building the CPU extension against torch $TORCH_VERSION"
(cd "$SRC" && CLUSTR_FAST_CPU_ONLY=1 "$VENV/bin/python" setup.py -q build_ext --inplace -t "$WORK/tmp" \
   >"$WORK/build.log" 2>&1) || { tail -40 "$WORK/build.log"; exit 1; }
"$VENV/bin/python" -c "import sys; sys.path.insert(0, '$SRC'); import clustr_fast
assert 'cpu' in clustr_fast.backends(), 'the extension built against torch $TORCH_VERSION does not load'"

say "tests"
(cd "$SRC" && PYTHONPATH=$SRC "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@")

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ -x "$CUDA_HOME/bin/nvcc" ]; then  # scripts/nvcc_check.sh runs $CUDA_HOME/bin/nvcc
  say "compiling csrc/cuda/*.cu for sm_90 against torch $TORCH_VERSION's headers"
  (cd "$SRC" && export ARCH=90 PYTHON="$VENV/bin/python" \
     && printf '%s\0' csrc/cuda/*.cu | xargs -0 -n 1 -P "${MAX_JOBS:-2}" bash scripts/nvcc_check.sh)
else
  say "no $CUDA_HOME/bin/nvcc: the CUDA sources were not compiled against torch $TORCH_VERSION"
fi
say "done"
