// The orthogonal basis in which ensemble_loss runs a linear hidden layer: W_h = Q H Q^T with H
// upper Hessenberg, by Householder reflections in float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ensemble/simd.h"

namespace rnnofrnns {
// Internal linkage, as if the code stood in the unit that includes it: these headers serve
// the ensemble units (and bench/micro) only.
namespace {

// W = Q H Q^T with Q orthogonal, its first column parallel to q1 (when q1 != 0), and H upper
// Hessenberg (H[j, k] = 0 for k < j - 1, set exactly): a reflection that maps e_0 onto q1, then
// N - 2 Householder reflections that keep e_0 (Golub and Van Loan, Matrix Computations,
// algorithm 7.4.2), in float64. W, H, Q: N x N row-major; q1: N. Compile-time sizes, so that
// GCC vectorizes the small loops (docs/performance.md has the setup's cost per instance).
template <int64_t N>
void hessenberg(const double* W, const double* q1, double* H, double* Q) {
  std::copy(W, W + N * N, H);
  for (int64_t i = 0; i < N * N; ++i) Q[i] = i % (N + 1) == 0 ? 1.0 : 0.0;
  double v[N];
  // P = I - beta v v^T applied as H = P H P, Q = Q P, v zero above index k0.
  auto reflect = [&](int64_t k0, double beta) {
    double w[N] = {};  // w = v^T H, then H = P H = H - beta v w
    NO_UNROLL for (int64_t i = k0; i < N; ++i)
      for (int64_t c = 0; c < N; ++c) w[c] += v[i] * H[i * N + c];
    NO_UNROLL for (int64_t i = k0; i < N; ++i)
      for (int64_t c = 0; c < N; ++c) H[i * N + c] -= beta * v[i] * w[c];
    for (double* M : {H, Q}) {  // H = H P, Q = Q P: d = M v (N independent sums), M -= beta d v^T
      double d[N] = {};
      NO_UNROLL for (int64_t i = k0; i < N; ++i)
        for (int64_t r = 0; r < N; ++r) d[r] += M[r * N + i] * v[i];
      NO_UNROLL for (int64_t r = 0; r < N; ++r)
        for (int64_t i = k0; i < N; ++i) M[r * N + i] -= beta * d[r] * v[i];
    }
  };
  {
    double rest = 0;
    for (int64_t i = 1; i < N; ++i) rest += q1[i] * q1[i];
    if (rest != 0) {  // q1 = c e_0 (or 0) needs no reflection
      const double norm = std::sqrt(q1[0] * q1[0] + rest), alpha = q1[0] >= 0 ? -norm : norm;
      v[0] = q1[0] - alpha;
      for (int64_t i = 1; i < N; ++i) v[i] = q1[i];
      reflect(0, 2.0 / (v[0] * v[0] + rest));  // P e_0 = q1 / alpha
    }
  }
  for (int64_t k = 0; k + 2 < N; ++k) {
    // P = I - beta v v^T (v zero above k + 1) maps column k's entries k+1.. onto e_{k+1}.
    double below = 0;
    for (int64_t i = k + 2; i < N; ++i) below += H[i * N + k] * H[i * N + k];
    if (below == 0) continue;  // already zero (NaN compares unequal and goes on, spreading it)
    const double x0 = H[(k + 1) * N + k];
    const double norm = std::sqrt(x0 * x0 + below);
    const double alpha = x0 >= 0 ? -norm : norm;  // no cancellation in v[k + 1] = x0 - alpha
    v[k + 1] = x0 - alpha;
    for (int64_t i = k + 2; i < N; ++i) v[i] = H[i * N + k];
    reflect(k + 1, 2.0 / (v[k + 1] * v[k + 1] + below));
  }
  for (int64_t r = 2; r < N; ++r)
    for (int64_t c = 0; c < r - 1; ++c) H[r * N + c] = 0.0;
}

// The linear-hidden ensemble in the basis g = Q^T h of hessenberg(W_h, q1 = W_y e_0): g_t = H g_{t-1}
// + Q^T W_x x_t and W_y^T h_t = (Q^T W_y)^T g_t, the same function of the weights for any
// orthogonal Q. H has 64 instead of 100 entries at n = 10 (both recurrences) and Q^T W_y e_0 =
// c e_0 has 1 instead of n (the readout and the backward's W_y go). Its weight gradients come back as
// dL/dW_x = Q G_x, dL/dW_h = Q G_h Q^T and dL/dW_y = Q G_y from those of the basis' weights.
// N hidden units, FN features (compile-time).
template <int64_t N, int64_t FN>
struct HessenbergBasis {
  double Q[N * N], H[N * N];
  // Q^T A for A [N, FN] (row-major, any element type), into out [N, FN].
  template <typename T>
  void qt_times(const T* A, double* out) const {
    double a[N * FN], o[N * FN] = {};
    for (int64_t i = 0; i < N * FN; ++i) a[i] = static_cast<double>(A[i]);
    NO_UNROLL for (int64_t i = 0; i < N; ++i)
      NO_UNROLL for (int64_t j = 0; j < N; ++j)
        for (int64_t f = 0; f < FN; ++f) o[j * FN + f] += Q[i * N + j] * a[i * FN + f];
    std::copy(o, o + N * FN, out);
  }
  // wx, wh, wy: the instance's weights; writes the basis' weights into wxb, whb, wyb.
  template <typename scalar_t>
  void set(const scalar_t* wx, const scalar_t* wh, const scalar_t* wy, scalar_t* wxb, scalar_t* whb, scalar_t* wyb) {
    double w[N * N], q1[N], t[N * FN];
    for (int64_t i = 0; i < N * N; ++i) w[i] = static_cast<double>(wh[i]);
    for (int64_t j = 0; j < N; ++j) q1[j] = static_cast<double>(wy[j * FN]);  // column 0 of W_y
    hessenberg<N>(w, q1, H, Q);
    for (int64_t i = 0; i < N * N; ++i) whb[i] = static_cast<scalar_t>(H[i]);
    qt_times(wx, t);
    for (int64_t i = 0; i < N * FN; ++i) wxb[i] = static_cast<scalar_t>(t[i]);
    qt_times(wy, t);
    for (int64_t j = 1; j < N; ++j) t[j * FN] = 0.0;  // Q^T W_y e_0 = c e_0: zero, not rounding
    for (int64_t i = 0; i < N * FN; ++i) wyb[i] = static_cast<scalar_t>(t[i]);
  }
  // gx, gh, gy: gradients with respect to the basis' weights, replaced by those of the instance.
  void gradients_back(double* gx, double* gh, double* gy) const {
    // Local copies and sums, so that the compiler sees no aliasing and vectorizes the rows.
    auto q_times = [&](const double* A, double* out, int64_t cols) {  // out = Q A, A [N, cols]
      NO_UNROLL for (int64_t i = 0; i < N; ++i) {
        double row[N > FN ? N : FN] = {};
        NO_UNROLL for (int64_t j = 0; j < N; ++j)
          for (int64_t c = 0; c < cols; ++c) row[c] += Q[i * N + j] * A[j * cols + c];
        std::copy(row, row + cols, out + i * cols);
      }
    };
    double a[N * (N > FN ? N : FN)], t[N * N], qt[N * N];
    for (double* g : {gx, gy}) {
      std::copy(g, g + N * FN, a);
      q_times(a, g, FN);
    }
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < N; ++k) qt[k * N + i] = Q[i * N + k];
    std::copy(gh, gh + N * N, a);
    q_times(a, t, N);  // t = Q gh
    NO_UNROLL for (int64_t i = 0; i < N; ++i) {  // gh = t Q^T
      double row[N] = {};
      NO_UNROLL for (int64_t j = 0; j < N; ++j)
        for (int64_t k = 0; k < N; ++k) row[k] += t[i * N + j] * qt[j * N + k];
      std::copy(row, row + N, gh + i * N);
    }
  }
};

}  // namespace
}  // namespace rnnofrnns
