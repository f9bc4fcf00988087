#!/bin/bash
# Per-pass rdtsc profile of ensemble_loss (the "rdtsc profile" figures in docs/performance.md):
# copies the tracked files of this checkout (or of the source tree SRC_TREE) to DIR, builds them
# there with -DRNNOFRNNS_PROFILE_PASSES (which turns on the counters of csrc/cpu/ensemble/profile.h;
# the normal build has none) and prints, per call (one thread, the benchmark's data), millions
# of TSC cycles: transposes, forward, readout+loss, backward, weight gradients. Compare builds by
# alternating them and taking the best of several calls.
#   bench/micro/ensemble_pass_profile.sh DIR [HIDDEN] [SRC_TREE]     (default hidden 10, this checkout)
# RELU_HIDDEN=1 profiles the relu-hidden variant (default: a linear hidden layer, as in the benchmark).
set -euo pipefail
D=$1; H=${2:-10}; REPO=$(cd "$(dirname "$0")/../.." && pwd); SRC=${3:-$REPO}
PY=${PYTHON:-$REPO/.venv/bin/python}
rm -rf "$D" && mkdir -p "$D" && (cd "$SRC" && git ls-files | tar cf - -T -) | (cd "$D" && tar xf -)
(cd "$D" && RNNOFRNNS_EXTRA_CXXFLAGS=-DRNNOFRNNS_PROFILE_PASSES "$PY" setup.py build_ext --inplace >/dev/null 2>&1) ||
  { echo "build failed in $D" >&2; exit 1; }
cd "$D" && PYTHONPATH="$D" "$PY" - "$REPO/bench/ops" "$H" <<'PYEOF'
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
from test_bench_ensemble import F, I, data
import rnnofrnns  # noqa: F401  (this copy's build)
n = int(sys.argv[2]); torch.set_num_threads(1); torch.set_flush_denormal(True)
x, y = data(); g = torch.Generator().manual_seed(1)
Wx = torch.randn(I, n, F, generator=g) * 0.3; Wh = torch.randn(I, n, n, generator=g) * 0.2
Wy = torch.randn(I, n, F, generator=g) * 0.3; b = torch.zeros(I, F)
for r in range(6):  # the first two calls warm up
    if r >= 2: os.environ["PROF"] = "1"
    torch.ops.rnnofrnns.ensemble_loss(x, Wx, Wh, Wy, b, y, os.environ.get("RELU_HIDDEN") == "1", True, True)
PYEOF
