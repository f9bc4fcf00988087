// Vector helpers shared by the kernels: relu and its mask in the fewest vector ops, for every
// CPU capability the kernels are built for (setup.py). Intrinsics of the build's own width
// where they apply, at::vec elsewhere.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rnnofrnns {
// Internal linkage: each build (and bench/micro) compiles its own copy.
namespace {

// All ones in the lanes where o > 0 or o is NaN, zero elsewhere: relu(o) = o & mask and
// relu'(o) e = e & mask (a NaN output stays NaN in the loss and in its gradient). One compare
// (and with AVX-512 one mask-to-vector move) and two bitwise ands instead of max (with its NaN
// check: max, compare, or), compare and blend, which all compete with the FMAs for the same
// vector pipes.
template <typename scalar_t>
inline __attribute__((always_inline)) at::vec::Vectorized<scalar_t> live_mask(const at::vec::Vectorized<scalar_t>& o) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float> && L == 16)
    return _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmp_ps_mask(o, _mm512_setzero_ps(), _CMP_NLE_UQ)));
  if constexpr (std::is_same_v<scalar_t, double> && L == 8)
    return _mm512_castsi512_pd(_mm512_movm_epi64(_mm512_cmp_pd_mask(o, _mm512_setzero_pd(), _CMP_NLE_UQ)));
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float> && L == 8)
    return _mm256_cmp_ps(o, _mm256_setzero_ps(), _CMP_NLE_UQ);
  if constexpr (std::is_same_v<scalar_t, double> && L == 4)
    return _mm256_cmp_pd(o, _mm256_setzero_pd(), _CMP_NLE_UQ);
#endif
  const at::vec::Vectorized<scalar_t> zero(scalar_t(0));
  return (o > zero) | o.isnan();
}

// relu(v) = max(0, v) in one instruction (at::vec::maximum adds a NaN check: three). A NaN v
// stays NaN: maxps returns its second operand when either one is NaN.
template <typename scalar_t>
inline __attribute__((always_inline)) at::vec::Vectorized<scalar_t> relu_vec(const at::vec::Vectorized<scalar_t>& v) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float> && L == 16) return _mm512_max_ps(_mm512_setzero_ps(), v);
  if constexpr (std::is_same_v<scalar_t, double> && L == 8) return _mm512_max_pd(_mm512_setzero_pd(), v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float> && L == 8) return _mm256_max_ps(_mm256_setzero_ps(), v);
  if constexpr (std::is_same_v<scalar_t, double> && L == 4) return _mm256_max_pd(_mm256_setzero_pd(), v);
#endif
  return at::vec::maximum(v, at::vec::Vectorized<scalar_t>(scalar_t(0)));
}

}  // namespace
}  // namespace rnnofrnns
