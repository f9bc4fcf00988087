// Register-block shapes for the weight-gradient products of ensemble_loss (outer_tiled in
// csrc/cpu/ensemble/outer_blocks.h): C[r, c] += sum_t A[t, r] * B[t, c], lane by lane, with RB x CB
// accumulators, per step RB + CB vector loads for RB * CB FMAs; A and B laid out as the
// kernel's [T = 64, n = 10 | F = 8, 8 lanes] buffers (in L1). Compare with bench/micro/fma_peak.cpp.
//   g++ -O3 -mavx2 -mfma bench/micro/outer_blocks.cpp -o /tmp/outer_blocks && /tmp/outer_blocks
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <vector>

#define UNROLL _Pragma("GCC unroll 16")

template <int RB, int CB>
__attribute__((noinline)) void block(const float* A, long a_step, const float* B, long b_step, long steps, float* C) {
  __m256 acc[RB][CB];
  UNROLL for (int r = 0; r < RB; ++r) UNROLL for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_setzero_ps();
  for (long t = 0; t < steps; ++t) {
    __m256 b[CB];
    UNROLL for (int c = 0; c < CB; ++c) b[c] = _mm256_loadu_ps(B + t * b_step + c * 8);
    UNROLL for (int r = 0; r < RB; ++r) {
      const __m256 a = _mm256_loadu_ps(A + t * a_step + r * 8);
      UNROLL for (int c = 0; c < CB; ++c) acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  UNROLL for (int r = 0; r < RB; ++r) UNROLL for (int c = 0; c < CB; ++c) {
    float* d = C + 8 * (r * CB + c);
    _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[r][c]));
  }
}

template <int RB, int CB>
void run() {
  const long T = 64, a_step = 80, b_step = 64, calls = 2000000 / T;
  std::vector<float> A(T * a_step + 64, 1.0f), B(T * b_step + 128, 1.0f), C(64 * 8);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < calls * 10; ++i) block<RB, CB>(A.data(), a_step, B.data(), b_step, T, C.data());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d x %-2d (%2d accumulators, %2d loads per %2d FMAs): %.2f G vector FMA/s\n", RB, CB, RB * CB, RB + CB,
              RB * CB, double(calls) * 10 * RB * CB * T / s / 1e9);
}

int main() {
  run<1, 8>();   // the previous weight-gradient loop (rows of A one at a time, all F columns)
  run<1, 10>();
  run<2, 4>();
  run<2, 5>();
  run<4, 2>();
  run<3, 4>();
  run<4, 3>();   // outer_tiled's main block
  run<4, 1>();
  run<8, 1>();
  return 0;
}
