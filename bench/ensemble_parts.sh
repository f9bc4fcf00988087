#!/bin/bash
# Builds bench/ensemble_parts.cpp against csrc/cpu/ensemble.cpp (or SRC) with the extension's
# flags and runs it: weight gradients of one tile in modes 0 and 7, and the Hessenberg setup.
#   bench/ensemble_parts.sh [SRC]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd); SRC=${1:-$REPO/csrc/cpu/ensemble.cpp}
PY=${PYTHON:-$REPO/.venv/bin/python}
INC=$("$PY" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
LIB=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
OUT=$(mktemp -d)/ensemble_parts
g++ -O3 -std=c++17 -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 -fno-math-errno -w \
  -DENSEMBLE_SRC="\"$SRC\"" $INC "$REPO/bench/ensemble_parts.cpp" -o "$OUT" -L"$LIB" -lc10 -ltorch_cpu -Wl,-rpath,"$LIB"
"$OUT" gw 0; "$OUT" gw 7; "$OUT" setup
