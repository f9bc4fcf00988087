// Peak 256-bit FMA rate of one core: 10 independent accumulators, registers only (the
// reference for the "fraction of peak" figures of the ensemble benchmark in docs/performance.md).
//   g++ -O2 -mavx2 -mfma -pthread bench/micro/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
// Prints the rate of one thread alone, then of two threads at once (one per core).
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

// The result is stored to a volatile and the function kept out of interprocedural analysis,
// so that the compiler can neither drop the call nor fold its loop.
volatile float g_sink;

__attribute__((noipa)) void fma_chains(long iters, float* out) {
  __m256 a[10];
  for (int i = 0; i < 10; ++i) a[i] = _mm256_set1_ps(1.0f + 0.1f * i);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long k = 0; k < iters; ++k) {
#pragma GCC unroll 10
    for (int i = 0; i < 10; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  __m256 s = a[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, a[i]);
  _mm256_storeu_ps(out, s);
}

int main() {
  const long iters = 200000000;
  for (int threads = 1; threads <= 2; ++threads) {
    std::vector<double> rate(threads);
    std::vector<std::thread> pool;
    for (int w = 0; w < threads; ++w)
      pool.emplace_back([&, w] {
        float out[8];
        const auto t0 = std::chrono::steady_clock::now();
        fma_chains(iters, out);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rate[w] = iters * 10.0 / s / 1e9;
        g_sink = out[0];
      });
    for (auto& t : pool) t.join();
    for (int w = 0; w < threads; ++w)
      std::printf("%d thread(s), thread %d: %.2f G vector FMA/s\n", threads, w, rate[w]);
  }
}
