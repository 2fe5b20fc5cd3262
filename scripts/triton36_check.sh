#!/usr/bin/env bash
# The Triton kernels on Triton 3.6, the version of the GPU machine (DESIGN.md: they must run on
# 3.6 and on 3.8, the version installed here). In a venv over the installed packages, with
# triton==3.6.0 in place of the installed Triton, it runs
#   1. every Triton-backend test (pytest -k triton), under the 3.6 interpreter;
#   2. tests/test_sass_rules.py, which compiles every kernel for sm_90a with its GPU launch
#      parameters by the 3.6 compiler (no GPU needed).
# numpy<2.3 as well: Triton 3.6's interpreter converts 1-element arrays to Python ints, which
# NumPy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars").
#   scripts/triton36_check.sh [pytest args]        (make test-triton36)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION=${TRITON_GPU_VERSION:-3.6.0}
VENV=${TRITON36_VENV:-build/venv-triton$VERSION}
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "triton==$VERSION" "numpy<2.3"
"$VENV/bin/python" - "$VERSION" <<'PY'
import sys, triton
print("triton", triton.__version__, "from", triton.__file__)
if triton.__version__ != sys.argv[1]:
    sys.exit(f"triton36_check: the venv imports Triton {triton.__version__}, not {sys.argv[1]}")
PY
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  -k "triton or sass_rules" tests "$@"
