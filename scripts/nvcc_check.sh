#!/usr/bin/env bash
# Compile CUDA sources of csrc/cuda/ for one arch (default sm_90) to catch
# compile errors quickly, without building the whole extension.
#   scripts/nvcc_check.sh csrc/cuda/magnet_loss_global.cu [more.cu ...]
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-90}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PY=${PYTHON:-python}
incs=$($PY - <<'PY'
import glob, os, sysconfig, torch
from torch.utils import cpp_extension
dirs = cpp_extension.include_paths(device_type="cuda") if "device_type" in cpp_extension.include_paths.__code__.co_varnames else cpp_extension.include_paths(cuda=True)
import nvidia
for base in nvidia.__path__:
    dirs += [d for d in glob.glob(os.path.join(base, "*", "include")) if os.path.exists(os.path.join(d, "cusparse.h"))]
dirs.append(sysconfig.get_paths()["include"])
print(" ".join("-I" + d for d in dirs))
PY
)
for f in "$@"; do
  echo "nvcc sm_$ARCH: $f"
  "$CUDA_HOME/bin/nvcc" -std=c++20 -O3 --expt-relaxed-constexpr -Icsrc $incs \
    -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
    -gencode arch=compute_$ARCH,code=sm_$ARCH -Xcompiler -fPIC -c "$f" -o "/tmp/nvcc_check_$(basename "$f").o"
done
echo "ok"
