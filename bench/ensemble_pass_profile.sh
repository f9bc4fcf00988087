#!/bin/bash
# Per-pass rdtsc profile of ensemble_loss (the "rdtsc profile" figures in the README): copies the
# repository (tracked files, or SRC as csrc/cpu/ensemble.cpp) to DIR, inserts TSC counters around
# the passes of one group of tiles, builds it there and prints, per call (one thread, the
# benchmark's data), millions of TSC cycles: transposes, forward, readout+loss, backward, weight
# gradients. Compare builds by alternating them and taking the best of several calls.
#   bench/ensemble_pass_profile.sh DIR [HIDDEN] [SRC]     (default hidden 10, the current source)
# RELU_HIDDEN=1 profiles the relu-hidden variant (default: a linear hidden layer, as in the benchmark).
set -euo pipefail
D=$1; H=${2:-10}; REPO=$(cd "$(dirname "$0")/.." && pwd); SRC=${3:-$REPO/csrc/cpu/ensemble.cpp}
PY=${PYTHON:-$REPO/.venv/bin/python}
rm -rf "$D" && mkdir -p "$D" && (cd "$REPO" && git ls-files | tar cf - -T -) | (cd "$D" && tar xf -)
cp "$SRC" "$D/csrc/cpu/ensemble.cpp"
"$PY" - "$D/csrc/cpu/ensemble.cpp" <<'PYEOF'
import sys
p = sys.argv[1]; s = open(p).read()
def rep(old, new):
    global s
    assert s.count(old) == 1, f"anchor not found once: {old!r}"
    s = s.replace(old, new)
rep("namespace rnnofrnns {\nnamespace {", "#include <x86intrin.h>\n#include <cstdio>\n#include <cstdlib>\nnamespace rnnofrnns {\nstd::atomic<uint64_t> g_prof[8];\nnamespace {")
rep("    constexpr int64_t G = decltype(G_tag)::value;\n", "    constexpr int64_t G = decltype(G_tag)::value;\n    uint64_t last_ts = __rdtsc();\n#define PROF(k) { const uint64_t now_ts = __rdtsc(); g_prof[k] += now_ts - last_ts; last_ts = now_ts; }\n")
rep("    // The recurrence passes call pf.step()", "    PROF(0)\n    // The recurrence passes call pf.step()")
rep("    for (int64_t g = 0; g < G; ++g) {\n      Vec lossv[2]", "    PROF(1)\n    for (int64_t g = 0; g < G; ++g) {\n      Vec lossv[2]")
rep("    if (!need_grad) return;\n    pf.start_near();", "    PROF(2)\n    if (!need_grad) return;\n    pf.start_near();")
rep("    // Weight gradients: sums over steps and lanes of outer products.\n", "    PROF(3)\n")
rep("      UNROLL for (int64_t f = 0; f < F; ++f) (Vec::loadu(ab + f * L) + sb[f]).store(ab + f * L);\n    }\n", "      UNROLL for (int64_t f = 0; f < F; ++f) (Vec::loadu(ab + f * L) + sb[f]).store(ab + f * L);\n    }\n    PROF(4)\n")
rep("  const auto dt = y.scalar_type();\n  const double count", "  if (std::getenv(\"PROF\")) std::fprintf(stderr, \"PROF Mcyc transp %.1f fwd %.1f readout %.1f bwd %.1f gW %.1f\\n\", g_prof[0]/1e6, g_prof[1]/1e6, g_prof[2]/1e6, g_prof[3]/1e6, g_prof[4]/1e6);\n  for (auto& c : g_prof) c = 0;\n  const auto dt = y.scalar_type();\n  const double count")
open(p, "w").write(s)
PYEOF
(cd "$D" && "$PY" setup.py build_ext --inplace >/dev/null 2>&1) || { echo "build failed in $D" >&2; exit 1; }
cd "$D" && PYTHONPATH="$D" "$PY" - "$REPO/bench" "$H" <<'PYEOF'
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
