// A matrix product whose every output element is summed in one fixed order, whatever the
// thread count: C[m, n] = sum_{k = 0..K-1} A[m, k] B[k, n], one fused multiply-add per k in
// increasing k, starting from zero.
//
// Why not at::mm: the BLAS torch ships (MKL) may split the reduction across threads, and on
// AMD CPUs it does so for small products, so its results change with the thread count; the
// ops promise the same bits on 1 or N threads. The work here is split only over blocks of
// output rows and columns (a function of the sizes alone), and the reduction is blocked over k
// without changing its order: an accumulator is stored after one k-block and reloaded for the
// next, so the sum is the same as one pass.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "rows_matmul.h"

namespace rnnofrnns {
namespace {

// Output columns per task and reduction steps per pass: a k-block of the packed B (256 x 256
// floats, 256 KB) stays in L2 while every row block of the task streams over it.
constexpr int64_t kGemmCols = 256;
constexpr int64_t kGemmDepth = 256;
constexpr int64_t kGemmRowsPerTask = 64;

// B packed into rows of a whole number of vectors (the columns past N are zero), so that the
// register-blocked product may read full vectors of every row.
template <typename T>
struct PackedB {
  std::vector<T> data;
  int64_t ld = 0;  // a multiple of the vector width
};

// Pack B[k, n] = src[k * k_stride + n * n_stride] for k < K, n < N.
template <typename T>
PackedB<T> pack_b(const T* src, int64_t k_stride, int64_t n_stride, int64_t K, int64_t N) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  PackedB<T> p;
  p.ld = std::max<int64_t>(V, (N + V - 1) / V * V);
  p.data.assign(static_cast<size_t>(K * p.ld), T(0));
  T* dst = p.data.data();
  at::parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      T* row = dst + k * p.ld;
      const T* s = src + k * k_stride;
      if (n_stride == 1) {
        std::memcpy(row, s, sizeof(T) * N);
      } else {
        for (int64_t n = 0; n < N; ++n) row[n] = s[n * n_stride];
      }
    }
  });
  return p;
}

// C[m, n] (row stride ldc, unit column stride) = sum_k A[m * a_rs + k * a_cs] * B[k, n] for
// m < M, n < N, with B packed by pack_b. C is overwritten.
template <typename T>
void fixed_order_mm(T* C, int64_t ldc, const T* A, int64_t a_rs, int64_t a_cs, const PackedB<T>& B, int64_t M,
                    int64_t N, int64_t K) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  if (M <= 0 || N <= 0) return;
  const int64_t full = N / V * V;  // columns written as whole vectors; the rest through a row buffer
  const int64_t row_tasks = (M + kGemmRowsPerTask - 1) / kGemmRowsPerTask;
  const int64_t col_tasks = (N + kGemmCols - 1) / kGemmCols;
  at::parallel_for(0, row_tasks * col_tasks, 1, [&](int64_t t0, int64_t t1) {
    T tail[kRows * V];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t / col_tasks) * kGemmRowsPerTask, m1 = std::min(M, m0 + kGemmRowsPerTask);
      const int64_t n0 = (t % col_tasks) * kGemmCols, n1 = std::min(N, n0 + kGemmCols);
      const int64_t n_full = std::max(n0, std::min(n1, full));  // [n0, n_full) whole vectors
      for (int64_t m = m0; m < m1; ++m) std::fill(C + m * ldc + n0, C + m * ldc + n1, T(0));
      for (int64_t k0 = 0; k0 < K; k0 += kGemmDepth) {
        const int64_t kb = std::min(kGemmDepth, K - k0);
        const T* Bk = B.data.data() + k0 * B.ld;
        for (int64_t m = m0; m < m1; m += kRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kRows, m1 - m));
          const T* a = A + m * a_rs + k0 * a_cs;
          if (n_full > n0) matmul_acc<T>(rows, C + m * ldc + n0, ldc, a, a_rs, a_cs, Bk + n0, B.ld, kb, n_full - n0);
          if (n1 > n_full) {  // the last partial vector: through a buffer, B's zero padding read
            const int64_t w = n1 - n_full;
            std::fill(tail, tail + rows * V, T(0));
            for (int r = 0; r < rows; ++r) std::memcpy(tail + r * V, C + (m + r) * ldc + n_full, sizeof(T) * w);
            matmul_acc<T>(rows, tail, V, a, a_rs, a_cs, Bk + n_full, B.ld, kb, V);
            for (int r = 0; r < rows; ++r) std::memcpy(C + (m + r) * ldc + n_full, tail + r * V, sizeof(T) * w);
          }
        }
      }
    }
  });
}

// out[j] = sum_{p < P} c[p] * W[p * J + j] for j < J, summed in increasing p.
template <typename T>
void fixed_order_weighted_sum(T* out, const T* W, const T* c, int64_t P, int64_t J) {
  at::parallel_for(0, J, 4096, [&](int64_t j0, int64_t j1) {
    std::fill(out + j0, out + j1, T(0));
    for (int64_t p = 0; p < P; ++p) {
      const T cp = c[p];
      const T* w = W + p * J;
      for (int64_t j = j0; j < j1; ++j) out[j] += cp * w[j];
    }
  });
}

// out[p] = sum_j W[p * J + j] * g[j] for p < P: four vector accumulators over j, then their
// lanes, in an order fixed by the sizes.
template <typename T>
void fixed_order_dots(T* out, const T* W, const T* g, int64_t P, int64_t J) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* w = W + p * J;
      Vec acc[4] = {Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};
      int64_t j = 0;
      for (; j + 4 * V <= J; j += 4 * V)
        for (int u = 0; u < 4; ++u)
          acc[u] = at::vec::fmadd(Vec::loadu(w + j + u * V), Vec::loadu(g + j + u * V), acc[u]);
      T lanes[V];
      ((acc[0] + acc[1]) + (acc[2] + acc[3])).store(lanes);
      T s = 0;
      for (int64_t l = 0; l < V; ++l) s += lanes[l];
      for (; j < J; ++j) s += w[j] * g[j];
      out[p] = s;
    }
  });
}

}  // namespace
}  // namespace rnnofrnns
