// Fused CPU kernels for the modular (block-diagonal + block-sparse) recurrence.
//
// Euler feedback step (step "euler"), a_i = alpha of the row's area:
//   hopfield: h_t = (1-a) h_{t-1} + a (W phi(h_{t-1}) + L h_{t-1} + u_t)
//   rate:     h_t = (1-a) h_{t-1} + a (phi(W h_{t-1} + u_t) + L h_{t-1})
// Cayley feedback step: the same without the L term gives z_t, then h_t = C z_t with
// C = (I - A L/2)^{-1} (I + A L/2). The caller (rnnofrnns/ops/modular_rnn/cayley.py) passes
// C in one of two factored forms, with differentiable torch ops in front:
//   step "star":  blocks P = (a_target/2) L of a star through area `hub` and S_inv, the
//                 inverse of the Schur complement S = I - sum_j P_hj P_jh. Per step:
//                 r = z_hub + sum_j P_hj z_j, s = S_inv r, h_hub = 2 s - z_hub,
//                 h_j = z_j + 2 P_jh s. No dense C; as many block products as L h.
//   step "dense": the p*p blocks of C itself (diagonal included): h = C z.
//
// W is block diagonal (p blocks of n x n); the feedback has k n x n blocks at
// (target, source) = L_index[r]. The whole time loop runs inside one call, the
// batch is split over threads in groups of up to kRows rows, and every group keeps
// its state in a padded per-area layout (n rounded up to the SIMD width) so that
// the inner product loops are plain vector FMAs over whole registers.
//
// Forward returns the states [T, B, p*n] (h_1..h_T) and, when a backward pass will
// follow: the rate form's pre-activations W h_{t-1} + u_t, the Cayley step's z_t and
// the star's r_t. Backward runs backpropagation through time from h_0 and the saved
// states and returns the gradients of the drive, W, the feedback blocks, h_0, alpha
// (the part through the (1-a) h + a F update; the torch ops in front of a Cayley call
// add the part through P and S_inv) and S_inv. The weight gradients are reductions
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

#include "checks.h"
#include "flush_denormal.h"
#include "output.h"
#include "rows_matmul.h"
#include "vec_ops.h"

namespace rnnofrnns {
namespace {

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
  int64_t hub;  // the star's hub area (Step::Star), else -1
  // In the star, block r is a hub-row block P_{hub,j} (target hub) or a leaf block P_{j,hub}.
  bool hub_row(const int64_t* Lidx, int64_t r) const { return Lidx[2 * r] == hub; }
};

// Pack the feedback blocks with the scale each step applies: alpha of the target area for
// the Euler step (L enters as a_i L_ij); 1 for hub-row and 2 for leaf blocks of the Cayley
// star (h_j = z_j + 2 P_jh s_h); 1 for the dense Cayley map.
template <typename T>
void pack_feedback(const T* Lb, const int64_t* Lidx, const Shape& s, int64_t np, const Feedback& fb,
                   const T* alpha, bool transpose, std::vector<T>& dst) {
  const int64_t blk = np * np, nn = s.n * s.n;
  dst.assign(static_cast<size_t>(std::max<int64_t>(s.k, 1) * blk), T(0));
  std::vector<T> one;
  for (int64_t r = 0; r < s.k; ++r) {
    T scale = T(1);
    if (fb.step == Step::Euler) scale = alpha[Lidx[2 * r]];
    if (fb.step == Step::Star && !fb.hub_row(Lidx, r)) scale = T(2);
    pack_blocks<T>(Lb + r * nn, 1, s.n, np, transpose, scale, one);
    std::copy(one.begin(), one.begin() + blk, dst.begin() + r * blk);
  }
}

// Per-area vectors of alpha and 1 - alpha.
template <typename T>
struct AreaRates {
  std::vector<Vectorized<T>> a, one_minus_a;
  AreaRates(const T* alpha, int64_t p) {
    for (int64_t i = 0; i < p; ++i) {
      a.emplace_back(alpha[i]);
      one_minus_a.emplace_back(T(1) - alpha[i]);
    }
  }
};

template <typename T>
void forward_kernel(const T* drive, const T* W, const T* Lb, const int64_t* Lidx, const T* h0, const T* alpha,
                    const T* S_inv, T* states, T* pre, T* zsave, T* rsave, const Shape s, const Nonlinearity nl,
                    const Form form, const Feedback fb) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t np = padded_size<T>(s.n), HP = s.p * np, BH = s.B * s.H, Bn = s.B * s.n;
  const Layout lay{s.n, np, HP};
  const bool hopfield = form == Form::Hopfield;
  // Packed weights, transposed for the row-times-matrix microkernel. In the hopfield form
  // each area's alpha is folded into its W block.
  std::vector<T> Wt, Lt, St;
  Wt.assign(static_cast<size_t>(s.p * np * np), T(0));
  {
    std::vector<T> one;
    for (int64_t i = 0; i < s.p; ++i) {
      pack_blocks<T>(W + i * s.n * s.n, 1, s.n, np, /*transpose=*/true, hopfield ? alpha[i] : T(1), one);
      std::copy(one.begin(), one.begin() + np * np, Wt.begin() + i * np * np);
    }
  }
  pack_feedback<T>(Lb, Lidx, s, np, fb, alpha, /*transpose=*/true, Lt);
  if (fb.step == Step::Star) pack_blocks<T>(S_inv, 1, s.n, np, /*transpose=*/true, T(1), St);
  const AreaRates<T> rates(alpha, s.p);
  const int64_t groups = (s.B + kRows - 1) / kRows;
  // When n is a multiple of the vector width the padded layout is the tensors' own: the steps
  // then read h_{t-1} from h0 / the states written the step before, write h_t straight into
  // the states and (hopfield form) read the drive in place, with no copies.
  const bool direct = s.n == np;

  // Each thread owns a contiguous range of batch groups and advances all of them
  // one step at a time, so every step streams one contiguous slab of the drive
  // and of the states.
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    FlushDenormalGuard ftz;
    const int64_t ng = direct ? 0 : g1 - g0, gsz = kRows * HP;  // in place: no per-group states
    std::vector<T> buf(static_cast<size_t>((2 * ng + 3) * gsz + 2 * kRows * np), T(0));
    T* hp_all = buf.data();        // h_{t-1} of every group (copied layout only)
    T* hn_all = hp_all + ng * gsz; // h_t of every group (copied layout only)
    T* u = hn_all + ng * gsz;
    T* tmp = u + gsz;
    T* cz = tmp + gsz;             // dense Cayley: C z
    T* rb = cz + gsz;              // star: r = z_hub + sum_j P_hj z_j
    T* sb = rb + kRows * np;       // star: s_hub = S^{-1} r
    auto rows_of = [&](int64_t g) { return static_cast<int>(std::min<int64_t>(kRows, s.B - g * kRows)); };
    if (!direct)
      for (int64_t g = g0; g < g1; ++g)
        gather_rows(hp_all + (g - g0) * gsz, h0 + g * kRows * s.H, rows_of(g), s.p, s.n, np, s.H);
    for (int64_t t = 0; t < s.T; ++t) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t b0 = g * kRows;
        const int rows = rows_of(g);
        const T* drive_t = drive + t * BH + b0 * s.H;
        const T* hp = !direct ? hp_all + (g - g0) * gsz : t == 0 ? h0 + b0 * s.H : states + (t - 1) * BH + b0 * s.H;
        T* hn = direct ? states + t * BH + b0 * s.H : hn_all + (g - g0) * gsz;
        if (!(direct && hopfield)) gather_rows(u, drive_t, rows, s.p, s.n, np, s.H);
        // The drive streams from memory once; ask for this group's next slab a step ahead
        // (into L2), so that the update loop below does not wait on it.
        if (t + 1 < s.T)
          for (int64_t e = 0, len = rows * s.H; e < len; e += 64 / static_cast<int64_t>(sizeof(T)))
            __builtin_prefetch(drive_t + BH + e, 0, 2);
        const T* uin = direct && hopfield ? drive_t : u;
        if (hopfield) {
          // hn = (1-a) h + a u + (aW) phi(h)  [+ (aL) h below for the Euler step]
          with_nonlinearity(nl, [&](auto tag) {
            constexpr Nonlinearity NL = decltype(tag)::value;
            for (int b = 0; b < rows; ++b)
              for (int64_t i = 0; i < s.p; ++i) {
                const Vec a = rates.a[i], oma = rates.one_minus_a[i];
                for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V) {
                  const Vec h = Vec::loadu(hp + j);
                  phi<NL>(h).store(tmp + j);
                  at::vec::fmadd(oma, h, a * Vec::loadu(uin + j)).store(hn + j);
                }
              }
          });
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, hn + i * np, tmp + i * np, Wt.data() + i * np * np);
        } else {
          // z = W h + u ; hn = (1-a) h + a phi(z)  [+ (aL) h below for the Euler step]
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, u + i * np, hp + i * np, Wt.data() + i * np * np);
          if (pre) scatter_rows(pre + t * BH + b0 * s.H, u, rows, s.p, s.n, np, s.H);
          with_nonlinearity(nl, [&](auto tag) {
            constexpr Nonlinearity NL = decltype(tag)::value;
            for (int b = 0; b < rows; ++b)
              for (int64_t i = 0; i < s.p; ++i) {
                const Vec a = rates.a[i], oma = rates.one_minus_a[i];
                for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V)
                  at::vec::fmadd(oma, Vec::loadu(hp + j), a * phi<NL>(Vec::loadu(u + j))).store(hn + j);
              }
          });
        }
        if (fb.step == Step::Euler) {
          for (int64_t r = 0; r < s.k; ++r)
            lay.block_step(rows, hn + Lidx[2 * r] * np, hp + Lidx[2 * r + 1] * np, Lt.data() + r * np * np);
        } else {
          // hn holds z; the Cayley map h = C z follows
          if (zsave && fb.step == Step::Dense) scatter_rows(zsave + t * BH + b0 * s.H, hn, rows, s.p, s.n, np, s.H);
          if (fb.step == Step::Dense) {
            std::fill(cz, cz + rows * HP, T(0));
            for (int64_t r = 0; r < s.k; ++r)
              lay.block_step(rows, cz + Lidx[2 * r] * np, hn + Lidx[2 * r + 1] * np, Lt.data() + r * np * np);
            std::copy(cz, cz + rows * HP, hn);
          } else {
            T* zh = hn + fb.hub * np;
            for (int b = 0; b < rows; ++b) std::copy(zh + b * HP, zh + b * HP + np, rb + b * np);
            for (int64_t r = 0; r < s.k; ++r)
              if (fb.hub_row(Lidx, r))
                matmul_acc(rows, rb, np, hn + Lidx[2 * r + 1] * np, HP, 1, Lt.data() + r * np * np, np, s.n, np);
            if (rsave)
              for (int b = 0; b < rows; ++b) std::copy(rb + b * np, rb + b * np + s.n, rsave + t * Bn + (b0 + b) * s.n);
            std::fill(sb, sb + rows * np, T(0));
            matmul_acc(rows, sb, np, rb, np, 1, St.data(), np, s.n, np);
            if (zsave)
              for (int b = 0; b < rows; ++b) std::copy(sb + b * np, sb + b * np + s.n, zsave + t * Bn + (b0 + b) * s.n);
            for (int b = 0; b < rows; ++b)
              for (int64_t j = 0; j < np; j += V)
                (Vec(T(2)) * Vec::loadu(sb + b * np + j) - Vec::loadu(zh + b * HP + j)).store(zh + b * HP + j);
            for (int64_t r = 0; r < s.k; ++r)
              if (!fb.hub_row(Lidx, r))
                matmul_acc(rows, hn + Lidx[2 * r] * np, HP, sb, np, 1, Lt.data() + r * np * np, np, s.n, np);
          }
        }
        if (!direct) scatter_rows(states + t * BH + b0 * s.H, hn, rows, s.p, s.n, np, s.H);
      }
      std::swap(hp_all, hn_all);
    }
  });
}

template <typename T>
void backward_kernel(const T* grad_states, const T* W, const T* Lb, const int64_t* Lidx, const T* h0,
                     const T* alpha, const T* S_inv, const T* states, const T* pre, const T* zsave, const T* rsave,
                     T* grad_drive, T* grad_h0, T* grad_W, T* grad_L, T* grad_alpha, T* grad_S, const Shape s,
                     const Nonlinearity nl, const Form form, const Feedback fb) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t np = padded_size<T>(s.n), HP = s.p * np, BH = s.B * s.H, Bn = s.B * s.n, blk = np * np;
  const Layout lay{s.n, np, HP};
  const bool hopfield = form == Form::Hopfield, euler = fb.step == Step::Euler, star = fb.step == Step::Star;
  // Untransposed packed weights: the microkernel then computes x -> W^T x.
  std::vector<T> Wp, Lp, Sp;
  Wp.assign(static_cast<size_t>(s.p * blk), T(0));
  {
    std::vector<T> one;
    for (int64_t i = 0; i < s.p; ++i) {
      pack_blocks<T>(W + i * s.n * s.n, 1, s.n, np, /*transpose=*/false, hopfield ? alpha[i] : T(1), one);
      std::copy(one.begin(), one.begin() + blk, Wp.begin() + i * blk);
    }
  }
  pack_feedback<T>(Lb, Lidx, s, np, fb, alpha, /*transpose=*/false, Lp);
  if (star) pack_blocks<T>(S_inv, 1, s.n, np, /*transpose=*/false, T(1), Sp);
  // The star saves s_hub [T, B, n] rather than z [T, B, p*n]: the backward rebuilds
  // z_hub = 2 s - h_hub and z_j = h_j - 2 P_jh s (Ln: the leaf blocks transposed, times -2).
  std::vector<T> Ln;
  if (star) {
    pack_feedback<T>(Lb, Lidx, s, np, fb, alpha, /*transpose=*/true, Ln);
    for (auto& v : Ln) v = -v;
  }
  const AreaRates<T> rates(alpha, s.p);
  const int64_t groups = (s.B + kRows - 1) / kRows;
  // The batch groups are split into chunks whose number depends on B only, never on the
  // thread count. Each chunk stages and accumulates its own weight gradients [p + k (+ 1)
  // blocks of np x np, then p alpha sums], and the chunks are summed in a fixed order, so
  // the results are bitwise identical for any number of threads (a resumed run on another
  // machine matches).
  const int64_t nW = grad_W ? s.p : 0, nL = grad_L ? s.k : 0;
  // Without alpha's gradient the star stages h_j instead of z_j = h_j - 2 P_jh s at the leaves
  // (no rebuild of z: 15 fewer block products per step for 16 areas) and corrects the hub-row
  // gradients at the end: sum gr z_j^T = sum gr h_j^T - 2 (sum gr s^T) P_jh^T.
  const bool leaf_h = star && !grad_alpha;
  const int64_t nS = star ? (leaf_h && grad_L ? 2 : 1) : 0;  // S_inv's gradient, then sum gr s^T
  const int64_t acc_size = (nW + nL + nS) * blk + s.p;
  const int64_t nchunks = std::min<int64_t>(groups, kChunks);
  std::vector<T> partial(static_cast<size_t>(nchunks * acc_size), T(0));

  auto run_chunk = [&](int64_t chunk) {
    const int64_t g0 = chunk * groups / nchunks, g1 = (chunk + 1) * groups / nchunks;
    T* accW = partial.data() + chunk * acc_size;
    T* accL = accW + nW * blk;
    T* accS = accL + nL * blk;
    T* accA = accS + nS * blk;  // per area: sum of dLoss/dx * (x - h_{t-1}), x = h_t (Euler) or z_t
    const int64_t ng = g1 - g0, gsz = kRows * HP, sst = kStage * HP;
    std::vector<T> buf(static_cast<size_t>((ng + 4) * gsz + (euler ? 4 : 6) * sst + 2 * kStage * np + 2 * kRows * np),
                       T(0));
    T* carry_all = buf.data();       // per group: dLoss/dh_t through the steps after t
    T* g = carry_all + ng * gsz;     // total gradient of h_t (Euler; the Cayley step stages it)
    T* z = g + gsz;                  // pre-activation (rate form)
    T* gz = z + gsz;                 // Cayley: gradient of z_t = C^T g
    T* x = gz + gsz;                 // h_t, for alpha's gradient (Euler; the Cayley step stages z_t)
    // Staged rows for the weight gradients: a*gz, h_{t-1}, the drive's gradient d (rate
    // form), phi(h_{t-1}) (hopfield form), and for the Cayley feedback the two sides of
    // every block's outer product (X at the target, Y at the source; the leaf blocks' factor
    // 2 is applied in the final sum) and, in the star, the hub's gs = dLoss/ds_hub and r.
    T* st_ag = x + gsz;
    T* st_h = st_ag + sst;
    T* st_d = st_h + sst;
    T* st_f = st_d + sst;
    T* st_X = euler ? st_ag : st_f + sst;
    T* st_Y = euler ? st_h : st_f + 2 * sst;
    T* st_gs = st_f + (euler ? 1 : 3) * sst;
    T* st_r = st_gs + kStage * np;
    T* gr = st_r + kStage * np;      // star: S^{-T} gs
    T* sh = gr + kRows * np;         // star: s_hub of step t
    auto flush = [&](int64_t nred) {
      if (nred == 0) return;
      if (grad_L)
        for (int64_t r = 0; r < s.k; ++r)
          lay.block_outer(accL + r * blk, st_X + Lidx[2 * r] * np, st_Y + Lidx[2 * r + 1] * np, nred);
      if (grad_W)
        for (int64_t i = 0; i < s.p; ++i)
          lay.block_outer(accW + i * blk, (hopfield ? st_ag : st_d) + i * np, (hopfield ? st_f : st_h) + i * np, nred);
      if (star) {
        const Layout hub{s.n, np, np};
        hub.block_outer(accS, st_gs, st_r, nred);
        if (nS == 2) lay.block_outer(accS + blk, st_X + fb.hub * np, st_Y + fb.hub * np, nred);
      }
    };
    int64_t slot = 0;
    // As in the forward, all groups of the thread step together (contiguous slabs per step).
    for (int64_t t = s.T - 1; t >= 0; --t) {
      for (int64_t gi = g0; gi < g1; ++gi) {
        const int64_t b0 = gi * kRows;
        const int rows = static_cast<int>(std::min<int64_t>(kRows, s.B - b0));
        const int64_t len = rows * HP;
        T* carry = carry_all + (gi - g0) * gsz;
        T* ag = st_ag + slot * HP;
        T* h = st_h + slot * HP;
        T* d = hopfield ? ag : st_d + slot * HP;
        // g and x: for the Cayley step they are staged as they are (the two sides X, Y of the
        // feedback blocks' outer products: g at the target, z at the source; in the star the
        // hub's entries become gr and s_hub below)
        T* gp = euler ? g : st_X + slot * HP;
        T* xp = euler ? x : st_Y + slot * HP;
        gather_rows(gp, grad_states + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        gather_rows(h, (t > 0 ? states + (t - 1) * BH : h0) + b0 * s.H, rows, s.p, s.n, np, s.H);
        if (grad_alpha || !euler)
          gather_rows(xp, (fb.step == Step::Dense ? zsave : states) + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        if (star)
          for (int b = 0; b < rows; ++b) std::copy(zsave + t * Bn + (b0 + b) * s.n, zsave + t * Bn + (b0 + b + 1) * s.n, sh + b * np);
        if (star && !leaf_h) {  // xp holds h_t: rebuild z_t from it and s_hub
          T* xh = xp + fb.hub * np;
          for (int b = 0; b < rows; ++b)
            for (int64_t j = 0; j < np; j += V)
              (Vec(T(2)) * Vec::loadu(sh + b * np + j) - Vec::loadu(xh + b * HP + j)).store(xh + b * HP + j);
          for (int64_t r = 0; r < s.k; ++r)
            if (!fb.hub_row(Lidx, r))
              matmul_acc(rows, xp + Lidx[2 * r] * np, HP, sh, np, 1, Ln.data() + r * blk, np, s.n, np);
        }
        if (!hopfield) gather_rows(z, pre + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        for (int64_t j = 0; j < len; j += V) (Vec::loadu(gp + j) + Vec::loadu(carry + j)).store(gp + j);
        // gz: the gradient of the pre-feedback state (g itself for the Euler step)
        T* gzp = euler ? gp : gz;
        if (fb.step == Step::Dense) {
          std::fill(gz, gz + len, T(0));
          for (int64_t r = 0; r < s.k; ++r)
            lay.block_step(rows, gz + Lidx[2 * r + 1] * np, gp + Lidx[2 * r] * np, Lp.data() + r * blk);
        } else if (star) {
          T* gs = st_gs + slot * np;
          T* gh = gp + fb.hub * np;
          for (int b = 0; b < rows; ++b)
            for (int64_t j = 0; j < np; j += V) (Vec(T(2)) * Vec::loadu(gh + b * HP + j)).store(gs + b * np + j);
          for (int64_t r = 0; r < s.k; ++r)
            if (!fb.hub_row(Lidx, r))
              matmul_acc(rows, gs, np, gp + Lidx[2 * r] * np, HP, 1, Lp.data() + r * blk, np, s.n, np);
          std::fill(gr, gr + rows * np, T(0));
          matmul_acc(rows, gr, np, gs, np, 1, Sp.data(), np, s.n, np);
          std::copy(gp, gp + len, gz);
          for (int b = 0; b < rows; ++b)
            for (int64_t j = 0; j < np; j += V) {
              const Vec grv = Vec::loadu(gr + b * np + j);
              (grv - Vec::loadu(gh + b * HP + j)).store(gz + fb.hub * np + b * HP + j);
              grv.store(gh + b * HP + j);  // X at the hub: gr
            }
          for (int64_t r = 0; r < s.k; ++r)
            if (fb.hub_row(Lidx, r))
              matmul_acc(rows, gz + Lidx[2 * r + 1] * np, HP, gr, np, 1, Lp.data() + r * blk, np, s.n, np);
          for (int b = 0; b < rows; ++b)
            std::copy(rsave + t * Bn + (b0 + b) * s.n, rsave + t * Bn + (b0 + b + 1) * s.n, st_r + (slot + b) * np);
        }
        // the step before the feedback: x = (1-a) h + a F(h, u)
        with_nonlinearity(nl, [&](auto tag) {
          constexpr Nonlinearity NL = decltype(tag)::value;
          for (int b = 0; b < rows; ++b)
            for (int64_t i = 0; i < s.p; ++i) {
              const Vec a = rates.a[i], oma = rates.one_minus_a[i];
              Vec sa(T(0));
              for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V) {
                const Vec gv = Vec::loadu(gzp + j);
                if (grad_alpha) sa = at::vec::fmadd(gv, Vec::loadu(xp + j) - Vec::loadu(h + j), sa);
                (a * gv).store(ag + j);
                if (hopfield) {
                  Vec(T(0)).store(carry + j);
                  if (grad_W) phi<NL>(Vec::loadu(h + j)).store(st_f + slot * HP + j);
                } else {
                  dphi<NL>(Vec::loadu(z + j), a * gv).store(d + j);
                  (oma * gv).store(carry + j);
                }
              }
              T lanes[V];
              sa.store(lanes);
              for (int64_t l = 0; l < V; ++l) accA[i] += lanes[l];
            }
        });
        if (star)  // Y at the hub: s_hub
          for (int b = 0; b < rows; ++b) std::copy(sh + b * np, sh + (b + 1) * np, xp + fb.hub * np + b * HP);
        scatter_rows(grad_drive + t * BH + b0 * s.H, d, rows, s.p, s.n, np, s.H);
        if (hopfield) {
          // carry = (1-a) gz + phi'(h) * ((aW)^T gz)
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, carry + i * np, gzp + i * np, Wp.data() + i * blk);
          with_nonlinearity(nl, [&](auto tag) {
            constexpr Nonlinearity NL = decltype(tag)::value;
            for (int b = 0; b < rows; ++b)
              for (int64_t i = 0; i < s.p; ++i) {
                const Vec oma = rates.one_minus_a[i];
                for (int64_t j = b * HP + i * np, e = j + np; j < e; j += V)
                  at::vec::fmadd(oma, Vec::loadu(gzp + j), dphi<NL>(Vec::loadu(h + j), Vec::loadu(carry + j)))
                      .store(carry + j);
              }
          });
        } else {
          // carry = (1-a) gz + W^T d
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, carry + i * np, d + i * np, Wp.data() + i * blk);
        }
        if (euler)  // carry += (aL)^T g
          for (int64_t r = 0; r < s.k; ++r)
            lay.block_step(rows, carry + Lidx[2 * r + 1] * np, g + Lidx[2 * r] * np, Lp.data() + r * blk);
        slot += rows;
        if (slot + kRows > kStage) {
          flush(slot);
          slot = 0;
        }
      }
    }
    flush(slot);
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t b0 = gi * kRows;
      const int rows = static_cast<int>(std::min<int64_t>(kRows, s.B - b0));
      scatter_rows(grad_h0 + b0 * s.H, carry_all + (gi - g0) * gsz, rows, s.p, s.n, np, s.H);
    }
  };
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    FlushDenormalGuard ftz;
    for (int64_t chunk = c0; chunk < c1; ++chunk) run_chunk(chunk);
  });

  // Sum the chunks' accumulators in order and drop the padding.
  auto reduce = [&](T* out, int64_t count, int64_t offset, auto scale_of) {
    for (int64_t b = 0; b < count; ++b) {
      const T scale = scale_of(b);
      for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < s.n; ++c) {
          T sum = T(0);
          for (int64_t ch = 0; ch < nchunks; ++ch) sum += partial[ch * acc_size + offset + b * blk + r * np + c];
          out[(b * s.n + r) * s.n + c] = scale * sum;
        }
    }
  };
  auto one = [](int64_t) { return T(1); };
  if (grad_W) reduce(grad_W, s.p, 0, one);
  if (grad_L) reduce(grad_L, s.k, nW * blk, [&](int64_t r) { return star && !fb.hub_row(Lidx, r) ? T(2) : T(1); });
  if (star) reduce(grad_S, 1, (nW + nL) * blk, one);
  if (nS == 2) {  // grad P_hj -= 2 (sum gr s^T) P_jh^T for every hub-row block with a leaf block back
    std::vector<T> G(static_cast<size_t>(s.n * s.n));
    reduce(G.data(), 1, (nW + nL + 1) * blk, one);
    std::vector<int64_t> leaf_of(static_cast<size_t>(s.p), -1);
    for (int64_t r = 0; r < s.k; ++r)
      if (!fb.hub_row(Lidx, r)) leaf_of[Lidx[2 * r]] = r;
    for (int64_t r = 0; r < s.k; ++r) {
      if (!fb.hub_row(Lidx, r) || leaf_of[Lidx[2 * r + 1]] < 0) continue;
      const T* Pjh = Lb + leaf_of[Lidx[2 * r + 1]] * s.n * s.n;
      T* out = grad_L + r * s.n * s.n;
      for (int64_t a = 0; a < s.n; ++a)
        for (int64_t c = 0; c < s.n; ++c) {
          T sum = T(0);
          for (int64_t e = 0; e < s.n; ++e) sum += G[a * s.n + e] * Pjh[c * s.n + e];
          out[a * s.n + c] -= T(2) * sum;
        }
    }
  }
  if (grad_alpha) {
    for (int64_t i = 0; i < s.p; ++i) {
      T sum = T(0);
      for (int64_t ch = 0; ch < nchunks; ++ch) sum += partial[ch * acc_size + (nW + nL + nS) * blk + i];
      grad_alpha[i] = sum / alpha[i];  // dx/da_i = (x - h_{t-1}) / a_i
    }
  }
}

Shape shape_of(const at::Tensor& drive, const at::Tensor& W, const at::Tensor& L_blocks) {
  return Shape{drive.size(0), drive.size(1), W.size(0), W.size(1), L_blocks.size(0), drive.size(2)};
}

// alpha as the data's dtype, contiguous, on the CPU (checked by check_modular_rnn_inputs).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> modular_rnn_fwd(
    const at::Tensor& drive_in, const at::Tensor& W_in, const at::Tensor& L_in, const at::Tensor& idx_in,
    const at::Tensor& h0_in, const at::Tensor& alpha_in, const at::Tensor& S_in, c10::string_view nonlinearity,
    c10::string_view form, c10::string_view step, int64_t hub, bool save) {
  const Nonlinearity nl = parse_nonlinearity(nonlinearity);
  const Form fm = parse_form(form);
  const Feedback fb{parse_step(step), hub};
  check_modular_rnn_inputs(drive_in, W_in, L_in, idx_in, h0_in, alpha_in, S_in, fb.step, hub, at::kCPU);
  const at::Tensor drive = drive_in.contiguous(), W = W_in.contiguous(), Lb = L_in.contiguous();
  const at::Tensor idx = idx_in.contiguous(), h0 = h0_in.contiguous(), alpha = alpha_in.contiguous();
  const at::Tensor S_inv = S_in.contiguous();
  const Shape s = shape_of(drive, W, Lb);
  at::Tensor states = new_output({s.T, s.B, s.H}, drive.options());
  const bool keep_pre = save && fm == Form::Rate, keep_z = save && fb.step != Step::Euler;
  const bool keep_r = save && fb.step == Step::Star;
  at::Tensor pre = new_output({keep_pre ? s.T : 0, s.B, s.H}, drive.options());
  // the Cayley step's saved state: z_t [T, B, p*n] for the dense map, s_hub [T, B, n] for the star
  at::Tensor z = new_output({keep_z ? s.T : 0, s.B, fb.step == Step::Star ? s.n : s.H}, drive.options());
  at::Tensor r = new_output({keep_r ? s.T : 0, s.B, s.n}, drive.options());
  Shape written = s;
  written.T = rows_to_write("modular_rnn_fwd", s.T);  // all steps, except in the test of the NaN fill
  AT_DISPATCH_FLOATING_TYPES(drive.scalar_type(), "modular_rnn_fwd", [&] {
    forward_kernel<scalar_t>(drive.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                             Lb.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                             h0.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(),
                             fb.step == Step::Star ? S_inv.const_data_ptr<scalar_t>() : nullptr,
                             states.mutable_data_ptr<scalar_t>(),
                             keep_pre ? pre.mutable_data_ptr<scalar_t>() : nullptr,
                             keep_z ? z.mutable_data_ptr<scalar_t>() : nullptr,
                             keep_r ? r.mutable_data_ptr<scalar_t>() : nullptr, written, nl, fm, fb);
  });
  return {states, pre, z, r};
}

void check_saved(const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& states) {
  TORCH_CHECK_VALUE(t.sizes() == shape && t.scalar_type() == states.scalar_type() && t.device() == states.device(),
                    "modular_rnn_bwd: ", name, " must be the forward's saved tensor of shape ", shape,
                    ", got shape ", t.sizes(), " (run the forward with save=True)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modular_rnn_bwd(
    const at::Tensor& grad_states_in, const at::Tensor& W_in, const at::Tensor& L_in, const at::Tensor& idx_in,
    const at::Tensor& h0_in, const at::Tensor& alpha_in, const at::Tensor& S_in, const at::Tensor& states_in,
    const at::Tensor& pre_in, const at::Tensor& z_in, const at::Tensor& r_in, c10::string_view nonlinearity,
    c10::string_view form, c10::string_view step, int64_t hub, bool need_W_grad, bool need_L_grad,
    bool need_alpha_grad) {
  const Nonlinearity nl = parse_nonlinearity(nonlinearity);
  const Form fm = parse_form(form);
  const Feedback fb{parse_step(step), hub};
  // states has the drive's shape [T, B, p*n]
  check_modular_rnn_inputs(states_in, W_in, L_in, idx_in, h0_in, alpha_in, S_in, fb.step, hub, at::kCPU);
  TORCH_CHECK_VALUE(grad_states_in.sizes() == states_in.sizes(), "modular_rnn_bwd: grad_states must have shape ",
                    states_in.sizes(), ", got ", grad_states_in.sizes());
  TORCH_CHECK_TYPE(grad_states_in.scalar_type() == states_in.scalar_type(), "modular_rnn_bwd: grad_states must be ",
                   states_in.scalar_type(), ", got ", grad_states_in.scalar_type());
  TORCH_CHECK_VALUE(grad_states_in.device() == states_in.device(), "modular_rnn_bwd: grad_states must be on ",
                    states_in.device(), ", got ", grad_states_in.device());
  const auto full = states_in.sizes();
  if (fm == Form::Rate) check_saved("pre", pre_in, full, states_in);
  const std::vector<int64_t> hub_shape{states_in.size(0), states_in.size(1), W_in.size(1)};
  if (fb.step == Step::Dense) check_saved("z", z_in, full, states_in);
  if (fb.step == Step::Star) {
    check_saved("z", z_in, hub_shape, states_in);
    check_saved("r", r_in, hub_shape, states_in);
  }
  const at::Tensor grad_states = grad_states_in.contiguous(), W = W_in.contiguous(), Lb = L_in.contiguous();
  const at::Tensor idx = idx_in.contiguous(), h0 = h0_in.contiguous(), states = states_in.contiguous();
  const at::Tensor pre = pre_in.contiguous(), z = z_in.contiguous(), r = r_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous(), S_inv = S_in.contiguous();
  const Shape s = shape_of(states, W, Lb);
  at::Tensor grad_drive = new_output({s.T, s.B, s.H}, states.options());
  at::Tensor grad_h0 = new_output({s.B, s.H}, states.options());
  // Weight gradients that are not asked for are returned as zeros.
  at::Tensor grad_W = need_W_grad ? new_output(W.sizes(), W.options()) : new_zero_output(W.sizes(), W.options());
  at::Tensor grad_L = need_L_grad ? new_output(Lb.sizes(), Lb.options()) : new_zero_output(Lb.sizes(), Lb.options());
  at::Tensor grad_alpha = need_alpha_grad ? new_output(alpha.sizes(), alpha.options())
                                          : new_zero_output(alpha.sizes(), alpha.options());
  at::Tensor grad_S = fb.step == Step::Star ? new_output(S_inv.sizes(), S_inv.options())
                                            : new_zero_output(S_inv.sizes(), S_inv.options());
  Shape written = s;
  written.T = rows_to_write("modular_rnn_bwd", s.T);  // all steps, except in the test of the NaN fill
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "modular_rnn_bwd", [&] {
    backward_kernel<scalar_t>(grad_states.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                              Lb.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                              h0.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(),
                              fb.step == Step::Star ? S_inv.const_data_ptr<scalar_t>() : nullptr,
                              states.const_data_ptr<scalar_t>(),
                              fm == Form::Rate ? pre.const_data_ptr<scalar_t>() : nullptr,
                              fb.step != Step::Euler ? z.const_data_ptr<scalar_t>() : nullptr,
                              fb.step == Step::Star ? r.const_data_ptr<scalar_t>() : nullptr,
                              grad_drive.mutable_data_ptr<scalar_t>(), grad_h0.mutable_data_ptr<scalar_t>(),
                              need_W_grad ? grad_W.mutable_data_ptr<scalar_t>() : nullptr,
                              need_L_grad ? grad_L.mutable_data_ptr<scalar_t>() : nullptr,
                              need_alpha_grad ? grad_alpha.mutable_data_ptr<scalar_t>() : nullptr,
                              fb.step == Step::Star ? grad_S.mutable_data_ptr<scalar_t>() : nullptr, written, nl, fm,
                              fb);
  });
  return {grad_drive, grad_W, grad_L, grad_h0, grad_alpha, grad_S};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("modular_rnn_fwd", &modular_rnn_fwd);
  m.impl("modular_rnn_bwd", &modular_rnn_bwd);
}

}  // namespace rnnofrnns
