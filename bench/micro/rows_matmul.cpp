// The per-step block product of modular_rnn (rows_matmul_acc in csrc/cpu/rows_matmul.h) alone,
// one thread, at the GW star's shape: 46 blocks of 32 x 32 per step (16 areas + 30 feedback
// blocks), every batch row group against every block, weights and states in L2 as in the
// kernel. GFLOP/s for 4 and 8 rows per weight pass (kRows), under the build's vector width:
//   T=$(python -c "import torch, os; print(os.path.dirname(torch.__file__))")/include
//   g++ -O3 -std=c++17 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -DCPU_CAPABILITY=AVX512 \
//       -DCPU_CAPABILITY_AVX512 -I$T -Icsrc/cpu bench/micro/rows_matmul.cpp -o /tmp/rows_matmul && /tmp/rows_matmul
//   (AVX2: -mavx2 -mfma -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2)
#include <chrono>
#include <cstdio>
#include <vector>

#include "rows_matmul.h"

namespace {

template <int NB>
__attribute__((noinline)) void block(float* acc, const float* x, const float* A, int64_t HP, int64_t n) {
  rnnofrnns::rows_matmul_acc<float, NB>(acc, HP, x, HP, 1, A, n, n, n);
}

template <int NB>
void run(int rows) {
  const int64_t n = 32, p = 16, HP = p * n, nblocks = 46, groups = rows / NB, steps = 2000;
  std::vector<float> W(nblocks * n * n, 0.01f), X(rows * HP, 0.5f), acc(rows * HP, 0.f);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < steps; ++s)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t b = 0; b < nblocks; ++b)
        block<NB>(acc.data() + g * NB * HP + (b % p) * n, X.data() + g * NB * HP + (b % p) * n,
                  W.data() + b * n * n, HP, n);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d rows per weight pass, %d rows: %.1f GFLOP/s (%g)\n", NB, rows,
              2.0 * steps * groups * nblocks * NB * n * n / dt / 1e9, acc[5]);
}

}  // namespace

int main() {
  for (int round = 0; round < 2; ++round) {
    run<4>(32);
    run<8>(32);
  }
}
