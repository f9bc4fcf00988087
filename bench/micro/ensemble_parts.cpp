// Parts of ensemble_loss timed on their own, in TSC cycles (the figures for the weight gradients
// of one tile and for the Hessenberg setup in docs/performance.md). Built and run by
// bench/micro/ensemble_parts.sh, against the kernel's own headers in csrc/cpu/ensemble/.
//   ensemble_parts gw MODE   weight gradients of one tile (hidden 10, F 8, T 64), best and mean of
//                            4000 calls, x 8192 tiles = Mcycles per op; MODE bits: 1 rewrite the
//                            tile's buffers before each call, 2 two tiles alternating, 4 prefetch
//                            64 KB of fresh lines before each call (7: all three, as in the op).
//                            Also a register-only FMA loop in the same process, for the peak.
//   ensemble_parts setup     HessenbergBasis<10, 8>: set and gradients_back per instance
#include "ensemble/hessenberg.h"
#include "ensemble/outer_blocks.h"

#include <x86intrin.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

using namespace rnnofrnns;

namespace {

// FMAs per TSC cycle of 10 independent register-only chains.
double fma_per_tsc() {
  uint64_t best = ~0ull;
  for (int k = 0; k < 200; ++k) {
    __m256 a[10];
    for (int i = 0; i < 10; ++i) a[i] = _mm256_set1_ps(i * 1e-3f);
    const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);
    const uint64_t t0 = __rdtsc();
    for (int it = 0; it < 2600; ++it)
      for (int i = 0; i < 10; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
    const uint64_t t1 = __rdtsc();
    float s = 0;
    for (int i = 0; i < 10; ++i) s += a[i][0];
    if (s == 12345.f) std::printf(" ");
    best = std::min(best, t1 - t0);
  }
  return 26000.0 / static_cast<double>(best);
}

int weight_gradients(int mode) {
  constexpr int64_t T = 64, n = 10, F = 8, L = 8, tile = 2 * T * F * L + 2 * T * n * L;
  std::vector<float> mem(2 * tile + 64), fresh(64 << 20, 1.f), accv(300 * L, 0.f);
  float* base0 = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(mem.data()) + 63) & ~uintptr_t(63));
  for (int64_t i = 0; i < 2 * tile; ++i) base0[i] = (i % 7) * 0.01f;
  float *aWy = accv.data(), *aWx = aWy + n * F * L, *aWh = aWx + n * F * L;
  size_t fpos = 0;
  uint64_t best = ~0ull, sum = 0;
  int count = 0;
  for (int k = 0; k < 4000; ++k) {
    float* go = base0 + ((mode & 2) ? (k & 1) * tile : 0);
    float *hs = go + T * F * L, *xt = hs + T * n * L, *gp = xt + T * F * L;
    if (mode & 1)
      for (int64_t i = 0; i < tile; i += 8) _mm256_storeu_ps(go + i, _mm256_set1_ps((k % 7) * 0.01f));
    if (mode & 4)
      for (int i = 0; i < 1024; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(fresh.data() + fpos), _MM_HINT_T0);
        fpos = (fpos + 16) % fresh.size();
      }
    const uint64_t t0 = __rdtsc();  // the op's order: W_x, W_h, W_y
    outer_tiled<float, false>(xt, F * L, F, gp, n * L, n, T, aWx, 1, F);
    outer_tiled<float, false>(gp + n * L, n * L, n, hs, n * L, n, T - 1, aWh, n, 1);
    outer_tiled<float, false>(go, F * L, F, hs, n * L, n, T, aWy, 1, F);
    const uint64_t t1 = __rdtsc();
    if (k >= 100) {
      best = std::min(best, t1 - t0);
      sum += t1 - t0;
      ++count;
    }
  }
  const double mean = static_cast<double>(sum) / count, peak = fma_per_tsc();
  std::printf("weight gradients, mode %d: best %lu, mean %.0f TSC cycles per tile (x 8192 tiles: %.1f / %.1f Mcycles); "
              "register-only FMA loop %.2f FMAs per TSC cycle, best call at %.0f%% of it\n",
              mode, static_cast<unsigned long>(best), mean, best * 8192 / 1e6, mean * 8192 / 1e6, peak,
              260.0 * T / static_cast<double>(best) / peak * 100);
  return 0;
}

int setup() {
  constexpr int64_t n = 10, F = 8;
  std::vector<float> wx(n * F), wh(n * n), wy(n * F), o1(n * F), o2(n * n), o3(n * F);
  for (int64_t i = 0; i < n * F; ++i) {
    wx[i] = 0.01f * (i % 17) - 0.05f;
    wy[i] = 0.02f * (i % 13) - 0.1f;
  }
  for (int64_t i = 0; i < n * n; ++i) wh[i] = 0.03f * (i % 11) - 0.15f;
  std::vector<double> gx(n * F, 1.0), gh(n * n, 1.0), gy(n * F, 1.0);
  uint64_t best_set = ~0ull, best_back = ~0ull;
  for (int k = 0; k < 1000; ++k) {
    HessenbergBasis<n, F> b;
    const uint64_t t0 = __rdtsc();
    b.set(wx.data(), wh.data(), wy.data(), o1.data(), o2.data(), o3.data());
    const uint64_t t1 = __rdtsc();
    b.gradients_back(gx.data(), gh.data(), gy.data());
    const uint64_t t2 = __rdtsc();
    best_set = std::min(best_set, t1 - t0);
    best_back = std::min(best_back, t2 - t1);
  }
  std::printf("Hessenberg setup per instance: set %lu, gradients_back %lu TSC cycles (x 256 instances: %.2f Mcycles)\n",
              static_cast<unsigned long>(best_set), static_cast<unsigned long>(best_back),
              (best_set + best_back) * 256 / 1e6);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "gw") == 0) return weight_gradients(std::atoi(argv[2]));
  if (argc == 2 && std::strcmp(argv[1], "setup") == 0) return setup();
  std::fprintf(stderr, "usage: ensemble_parts gw MODE (0-7) | ensemble_parts setup\n");
  return 2;
}
