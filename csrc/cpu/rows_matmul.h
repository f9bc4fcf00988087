// The register-blocked product of modular_rnn's kernels (csrc/cpu/modular_rnn/), in a
// header so that bench/micro/rows_matmul.cpp times the same code.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace rnnofrnns {
// Internal linkage: each build (and bench/micro) compiles its own copy.
namespace {

// Batch rows that share one pass over the weights: each row holds two vector accumulators
// per block in registers, so AVX-512 (32 registers) takes 8 rows and AVX2 (16) takes 4. With
// 16-lane vectors 4 rows were not enough reuse of each weight load to keep up with the FMAs
// (bench/micro/rows_matmul.cpp).
constexpr int kRows = at::vec::Vectorized<float>::size() >= 16 ? 8 : 4;

// acc[b*acc_ld + r] += sum_{c<nred} x[b*x_rs + c*x_cs] * A[c*a_ld + r]  for b < NB, r < width.
// width is a multiple of the vector width; two vectors of outputs for NB rows are
// held in registers while A streams through once. The same routine serves the
// per-step products (rows = batch rows) and the weight-gradient updates (rows =
// rows of a block, reduction over staged (t, b) rows).
template <typename T, int NB>
inline void rows_matmul_acc(T* acc, int64_t acc_ld, const T* x, int64_t x_rs, int64_t x_cs, const T* A,
                            int64_t a_ld, int64_t nred, int64_t width) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  int64_t r0 = 0;
  for (; r0 + 2 * V <= width; r0 += 2 * V) {
    Vec a0[NB], a1[NB];
    for (int b = 0; b < NB; ++b) {
      a0[b] = Vec::loadu(acc + b * acc_ld + r0);
      a1[b] = Vec::loadu(acc + b * acc_ld + r0 + V);
    }
    const T* a = A + r0;
    const T* xc = x;
    for (int64_t c = 0; c < nred; ++c, a += a_ld, xc += x_cs) {
      const Vec w0 = Vec::loadu(a);
      const Vec w1 = Vec::loadu(a + V);
      for (int b = 0; b < NB; ++b) {
        const Vec xb(xc[b * x_rs]);
        a0[b] = at::vec::fmadd(w0, xb, a0[b]);
        a1[b] = at::vec::fmadd(w1, xb, a1[b]);
      }
    }
    for (int b = 0; b < NB; ++b) {
      a0[b].store(acc + b * acc_ld + r0);
      a1[b].store(acc + b * acc_ld + r0 + V);
    }
  }
  if (r0 < width) {
    Vec a0[NB];
    for (int b = 0; b < NB; ++b) a0[b] = Vec::loadu(acc + b * acc_ld + r0);
    const T* a = A + r0;
    const T* xc = x;
    for (int64_t c = 0; c < nred; ++c, a += a_ld, xc += x_cs) {
      const Vec w0 = Vec::loadu(a);
      for (int b = 0; b < NB; ++b) a0[b] = at::vec::fmadd(w0, Vec(xc[b * x_rs]), a0[b]);
    }
    for (int b = 0; b < NB; ++b) a0[b].store(acc + b * acc_ld + r0);
  }
}

template <typename T>
inline void matmul_acc(int rows, T* acc, int64_t acc_ld, const T* x, int64_t x_rs, int64_t x_cs, const T* A,
                       int64_t a_ld, int64_t nred, int64_t width) {
  switch (rows) {
    case 8: rows_matmul_acc<T, 8>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 7: rows_matmul_acc<T, 7>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 6: rows_matmul_acc<T, 6>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 5: rows_matmul_acc<T, 5>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 4: rows_matmul_acc<T, 4>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 3: rows_matmul_acc<T, 3>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 2: rows_matmul_acc<T, 2>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    default: rows_matmul_acc<T, 1>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
  }
}

}  // namespace
}  // namespace rnnofrnns
