#pragma once

// Shared by the fused CPU kernels for the modular (block-diagonal + block-sparse) recurrence.
//
// Euler feedback step (step "euler"), a_i = alpha of the row's area:
//   hopfield: h_t = (1-a) h_{t-1} + a (W phi(h_{t-1}) + L h_{t-1} + u_t)
//   rate:     h_t = (1-a) h_{t-1} + a (phi(W h_{t-1} + u_t) + L h_{t-1})
// Cayley feedback step: the same without the L term gives z_t, then h_t = C z_t with
// C = (I - A L/2)^{-1} (I + A L/2), A = diag(the feedback rates, constant per area). The caller (rnnofrnns/ops/modular_rnn/cayley.py) passes
// C in one of two factored forms, with differentiable torch ops in front:
//   step "star":  a product of m stars, applied in order (one star: C itself). Star q holds the
//                 blocks P = (a_target/2) L that touch its hub area h (L_index [k, 4]: target,
//                 source, star, hub) and S_inv[q], the inverse of its Schur complement
//                 S = I - sum_j P_hj P_jh. Per star, in place on the state:
//                 r = z_h + sum_j P_hj z_j, s = S_inv r, h_h = 2 s - z_h, h_j = z_j + 2 P_jh s.
//                 No dense C; k + m block products per step.
//   step "dense": the p*p blocks of C itself (diagonal included): h = C z.
//
// W is block diagonal (p blocks of n x n); the feedback has k n x n blocks at
// (target, source) = L_index[r]. The whole time loop runs inside one call, the
// batch is split over threads in groups of up to kRows rows, and every group keeps
// its state in a padded per-area layout (n rounded up to the SIMD width) so that
// the inner product loops are plain vector FMAs over whole registers.
//
// The areas' rates are one value per area [p] or one per step, row and area [T, B, p]
// (input-driven timescales); the Euler step's feedback is scaled by the same rate.
//
// Forward returns the states [T, B, p*n] (h_1..h_T) and, when a backward pass will
// follow: the rate form's pre-activations W h_{t-1} + u_t, the dense Cayley map's z_t and
// the stars' s_t and r_t ([T, B, m*n]). Backward runs backpropagation through time from h_0 and the saved
// states and returns the gradients of the drive, W, the feedback blocks, h_0, alpha
// (the part through the (1-a) h + a F update, [p] or [T, B, p] as alpha; the torch ops in front
// of a Cayley call add the part through P and S_inv) and S_inv. The weight gradients are reductions
// over all (t, b) of outer products; they are fused into the backward loop: every
// kStage (t, b) rows are staged in a small buffer and applied to per-thread
// accumulators (which stay in cache) as one rank-kStage update.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../flush_denormal.h"
#include "../output.h"
#include "../rows_matmul.h"
#include "../vec_ops.h"

namespace rnnofrnns {
// Hidden: every CPU build (avx512, avx2, default) is its own module with these same names.
namespace __attribute__((visibility("hidden"))) modular_rnn_cpu {


using at::vec::Vectorized;

constexpr int kStage = 16;  // (t, b) rows per weight-gradient update; a multiple of kRows
constexpr int64_t kChunks = 16;  // independent slices of the batch in the backward pass

template <typename T>
int64_t padded_size(int64_t n) {
  const int64_t v = Vectorized<T>::size();
  return (n + v - 1) / v * v;
}

// dst[blk] (np x np, zero padded) = scale * src[blk] (n x n), optionally transposed.
template <typename T>
void pack_blocks(const T* src, int64_t count, int64_t n, int64_t np, bool transpose, T scale,
                 std::vector<T>& dst) {
  dst.assign(static_cast<size_t>(std::max<int64_t>(count, 1) * np * np), T(0));
  for (int64_t b = 0; b < count; ++b) {
    const T* s = src + b * n * n;
    T* d = dst.data() + b * np * np;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < n; ++c)
        d[transpose ? c * np + r : r * np + c] = scale * s[r * n + c];
  }
}

// The padded per-area layout of a group of batch rows: row stride HP = p * np.
struct Layout {
  int64_t n, np, HP;
  // acc[b, :] += x[b, :] @ A for one area (A an np x np packed block), b < rows.
  template <typename T>
  void block_step(int rows, T* acc, const T* x, const T* A) const {
    matmul_acc(rows, acc, HP, x, HP, 1, A, np, n, np);
  }
  // acc (n x np block) += sum_{c<nred} xs[c, :]^T ys[c, :] for one area pair of nred staged rows.
  template <typename T>
  void block_outer(T* acc, const T* xs, const T* ys, int64_t nred) const {
    for (int64_t i0 = 0; i0 < n; i0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, n - i0));
      matmul_acc(rows, acc + i0 * np, np, xs + i0, 1, HP, ys, HP, nred, np);
    }
  }
};

// f(tag) with the nonlinearity as a compile-time constant (decltype(tag)::value): the
// elementwise loops then hold no switch and, for relu, no possible call to tanh, which had
// made GCC keep their vectors and pointers on the stack.
template <Nonlinearity NL>
using NlTag = std::integral_constant<Nonlinearity, NL>;

template <typename F>
inline void with_nonlinearity(Nonlinearity nl, const F& f) {
  switch (nl) {
    case Nonlinearity::Relu: f(NlTag<Nonlinearity::Relu>{}); break;
    case Nonlinearity::Tanh: f(NlTag<Nonlinearity::Tanh>{}); break;
    default: f(NlTag<Nonlinearity::Identity>{}); break;
  }
}

template <Nonlinearity NL, typename T>
inline Vectorized<T> phi(const Vectorized<T>& z) {
  if constexpr (NL == Nonlinearity::Relu) return relu_vec(z);
  else if constexpr (NL == Nonlinearity::Tanh) return z.tanh();
  else return z;
}

// phi'(z) * g.
template <Nonlinearity NL, typename T>
inline Vectorized<T> dphi(const Vectorized<T>& z, const Vectorized<T>& g) {
  using Vec = Vectorized<T>;
  if constexpr (NL == Nonlinearity::Relu) {
    return Vec::blendv(Vec(T(0)), g, z > Vec(T(0)));
  } else if constexpr (NL == Nonlinearity::Tanh) {
    const Vec th = z.tanh();
    return g * (Vec(T(1)) - th * th);
  } else {
    return g;
  }
}

// Copy `rows` rows of p areas of n values from an unpadded [.., p*n] tensor (row
// stride H) into the padded scratch (row stride p*np), and back.
// (When n is a multiple of the vector width the layouts agree: one copy per row.)
template <typename T>
inline void gather_rows(T* dst, const T* src, int rows, int64_t p, int64_t n, int64_t np, int64_t H) {
  if (n == np) {
    for (int b = 0; b < rows; ++b) std::copy(src + b * H, src + b * H + p * n, dst + b * p * np);
    return;
  }
  for (int b = 0; b < rows; ++b)
    for (int64_t i = 0; i < p; ++i)
      std::copy(src + b * H + i * n, src + b * H + i * n + n, dst + b * p * np + i * np);
}

template <typename T>
inline void scatter_rows(T* dst, const T* src, int rows, int64_t p, int64_t n, int64_t np, int64_t H) {
  if (n == np) {
    for (int b = 0; b < rows; ++b) std::copy(src + b * p * np, src + b * p * np + p * n, dst + b * H);
    return;
  }
  for (int b = 0; b < rows; ++b)
    for (int64_t i = 0; i < p; ++i)
      std::copy(src + b * p * np + i * np, src + b * p * np + i * np + n, dst + b * H + i * n);
}

struct Shape {
  int64_t T, B, p, n, k, H;
};

// The feedback step (see the header comment): every kernel below treats the three alike
// except where the feedback is applied (forward) and transposed (backward).
struct Feedback {
  Step step;
  // The stars (Step::Star): each star's hub, its hub-row blocks P_{hub,j} (target hub) and
  // leaf blocks P_{j,hub}, and its stage: consecutive stars on disjoint areas share one (the
  // backward stages their rows in one buffer).
  std::vector<int64_t> hubs, star_of, stage_of;
  std::vector<std::vector<int64_t>> hub_rows, leaf_rows;
  int64_t stages = 0;
  int64_t stars() const { return static_cast<int64_t>(hubs.size()); }
  bool hub_row(const int64_t* Lidx, int64_t r) const { return Lidx[2 * r] == hubs[star_of[r]]; }
};

// The feedback of a step from the (checked) index: [k, 4] (target, source, star, hub) for
// m stars, [k, 2] otherwise.
inline Feedback make_feedback(Step step, const at::Tensor& idx, int64_t m, int64_t p) {
  Feedback fb{step, {}, {}, {}, {}, {}, 0};
  if (step != Step::Star) return fb;
  const int64_t k = idx.size(0);
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  fb.hubs.assign(static_cast<size_t>(m), 0);
  fb.hub_rows.resize(static_cast<size_t>(m));
  fb.leaf_rows.resize(static_cast<size_t>(m));
  fb.star_of.resize(static_cast<size_t>(k));
  for (int64_t r = 0; r < k; ++r) {
    const int64_t q = ix[4 * r + 2], hub = ix[4 * r + 3];
    fb.hubs[q] = hub;
    fb.star_of[r] = q;
    (ix[4 * r] == hub ? fb.hub_rows : fb.leaf_rows)[q].push_back(r);
  }
  std::vector<char> used(static_cast<size_t>(p), 0);
  for (int64_t q = 0; q < m; ++q) {
    std::vector<int64_t> areas{fb.hubs[q]};
    for (int64_t r : fb.hub_rows[q]) areas.push_back(ix[4 * r + 1]);
    for (int64_t r : fb.leaf_rows[q]) areas.push_back(ix[4 * r]);
    bool clash = q == 0;
    for (int64_t a : areas) clash = clash || used[a];
    if (clash) {
      std::fill(used.begin(), used.end(), 0);
      ++fb.stages;
    }
    for (int64_t a : areas) used[a] = 1;
    fb.stage_of.push_back(fb.stages - 1);
  }
  return fb;
}

// Pack the feedback blocks with the scale each step applies: for the Euler step alpha of the
// target area when `alpha` is given (L enters as a_i L_ij; null: 1, the rate applied by the
// caller); 1 for hub-row and 2 for leaf blocks of the Cayley star (h_j = z_j + 2 P_jh s_h); 1
// for the dense Cayley map.
template <typename T>
void pack_feedback(const T* Lb, const int64_t* Lidx, const Shape& s, int64_t np, const Feedback& fb,
                   const T* alpha, bool transpose, std::vector<T>& dst) {
  const int64_t blk = np * np, nn = s.n * s.n;
  dst.assign(static_cast<size_t>(std::max<int64_t>(s.k, 1) * blk), T(0));
  std::vector<T> one;
  for (int64_t r = 0; r < s.k; ++r) {
    T scale = T(1);
    if (fb.step == Step::Euler && alpha) scale = alpha[Lidx[2 * r]];
    if (fb.step == Step::Star && !fb.hub_row(Lidx, r)) scale = T(2);
    pack_blocks<T>(Lb + r * nn, 1, s.n, np, transpose, scale, one);
    std::copy(one.begin(), one.begin() + blk, dst.begin() + r * blk);
  }
}

// The areas' rates a (the update x = (1-a) h + a F): one value per area ([p], `per_step`
// false) or one per step, batch row and area ([T, B, p], input-driven timescales).
template <typename T>
struct AreaRates {
  const T* alpha;
  bool per_step;
  int64_t B, p;
  T at(int64_t t, int64_t b, int64_t i) const { return per_step ? alpha[(t * B + b) * p + i] : alpha[i]; }
};

// The p area blocks of W packed (np x np each, zero padded), optionally transposed.
template <typename T>
std::vector<T> pack_areas(const T* W, const Shape& s, int64_t np, bool transpose) {
  std::vector<T> packed(static_cast<size_t>(s.p * np * np), T(0)), one;
  for (int64_t i = 0; i < s.p; ++i) {
    pack_blocks<T>(W + i * s.n * s.n, 1, s.n, np, transpose, T(1), one);
    std::copy(one.begin(), one.begin() + np * np, packed.begin() + i * np * np);
  }
  return packed;
}

// The kernels (forward.cpp, backward.cpp), instantiated for float and double.
template <typename T>
void forward_kernel(const T* drive, const T* W, const T* Lb, const int64_t* Lidx, const T* h0, const AreaRates<T> rates,
                    const T* S_inv, T* states, T* pre, T* zsave, T* rsave, const Shape s, const Nonlinearity nl,
                    const Form form, const Feedback& fb);

template <typename T>
void backward_kernel(const T* grad_states, const T* W, const T* Lb, const int64_t* Lidx, const T* h0,
                     const AreaRates<T> rates, const T* S_inv, const T* states, const T* pre, const T* zsave, const T* rsave,
                     T* grad_drive, T* grad_h0, T* grad_W, T* grad_L, T* grad_alpha, T* grad_S, const Shape s,
                     const Nonlinearity nl, const Form form, const Feedback& fb);

}  // namespace modular_rnn_cpu
}  // namespace rnnofrnns
