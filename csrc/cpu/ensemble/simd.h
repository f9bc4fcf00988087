// SIMD helpers of the ensemble kernels: the 8 x 8 transpose of a tile's rows into lane-major
// buffers and the loop pragmas that keep per-step vectors in registers (relu and its mask are
// in vec_ops.h). AVX2 intrinsics where they apply, at::vec elsewhere.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#include "vec_ops.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace rnnofrnns {
// Internal linkage, as if the code stood in the unit that includes it: these headers serve
// the ensemble units (and bench/micro) only.
namespace {

// Fully unrolled loops over compile-time hidden sizes / feature counts keep the per-step
// vector arrays in registers (GCC otherwise stores them back to the stack every iteration).
// Not in the portable build: there every vector op is itself a scalar loop, and unrolling
// them made its compile time several minutes for no register to keep.
#if defined(CPU_CAPABILITY_DEFAULT)
#define UNROLL
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif
#define ALWAYS_INLINE inline __attribute__((always_inline))
// Keeps GCC from unrolling a short outer loop completely, which leaves the loop inside it scalar.
#define NO_UNROLL _Pragma("GCC unroll 1")

// dst[q*L + l] = rows[l][q] for q < len, l < L; rows l >= nrows are zero.
template <typename scalar_t>
void transpose_rows(const scalar_t* src, int64_t row_stride, int64_t nrows, int64_t len, scalar_t* dst) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
#if defined(__AVX2__)
  if constexpr (std::is_same_v<scalar_t, float> && L == 8) {
    if (len % 8 == 0) {
      const __m256 zero = _mm256_setzero_ps();
      for (int64_t q = 0; q < len; q += 8) {
        __m256 r[8];
        for (int64_t l = 0; l < 8; ++l) r[l] = l < nrows ? _mm256_loadu_ps(src + l * row_stride + q) : zero;
        const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
        const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
        const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
        const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
        const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
        const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
        const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
        const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
        float* o = dst + q * 8;
        _mm256_storeu_ps(o + 0 * 8, _mm256_permute2f128_ps(s0, s4, 0x20));
        _mm256_storeu_ps(o + 1 * 8, _mm256_permute2f128_ps(s1, s5, 0x20));
        _mm256_storeu_ps(o + 2 * 8, _mm256_permute2f128_ps(s2, s6, 0x20));
        _mm256_storeu_ps(o + 3 * 8, _mm256_permute2f128_ps(s3, s7, 0x20));
        _mm256_storeu_ps(o + 4 * 8, _mm256_permute2f128_ps(s0, s4, 0x31));
        _mm256_storeu_ps(o + 5 * 8, _mm256_permute2f128_ps(s1, s5, 0x31));
        _mm256_storeu_ps(o + 6 * 8, _mm256_permute2f128_ps(s2, s6, 0x31));
        _mm256_storeu_ps(o + 7 * 8, _mm256_permute2f128_ps(s3, s7, 0x31));
      }
      return;
    }
  }
#endif
  for (int64_t l = 0; l < L; ++l) {
    if (l < nrows) {
      const scalar_t* s = src + l * row_stride;
      for (int64_t q = 0; q < len; ++q) dst[q * L + l] = s[q];
    } else {
      for (int64_t q = 0; q < len; ++q) dst[q * L + l] = scalar_t(0);
    }
  }
}

}  // namespace
}  // namespace rnnofrnns
