#!/bin/bash
# Builds bench/micro/ensemble_parts.cpp against the kernel headers of csrc/cpu/ensemble/ (of this
# checkout, or of the source tree SRC_TREE) with the extension's flags and runs it: the weight
# gradients of one tile in modes 0 and 7, and the Hessenberg setup.
#   bench/micro/ensemble_parts.sh [SRC_TREE]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd); SRC=${1:-$REPO}
PY=${PYTHON:-$REPO/.venv/bin/python}
INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
LIB=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
OUT=$(mktemp -d)/ensemble_parts
g++ -O3 -std=c++17 -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 -fno-math-errno -w \
  -I"$SRC/csrc/cpu" $INC "$REPO/bench/micro/ensemble_parts.cpp" -o "$OUT" -L"$LIB" -lc10 -ltorch_cpu -Wl,-rpath,"$LIB"
"$OUT" gw 0; "$OUT" gw 7; "$OUT" setup
