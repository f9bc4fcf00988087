// Fused CPU kernels for the modular (block-diagonal + block-sparse) recurrence.
//
//   hopfield: h_t = (1-a) h_{t-1} + a (W phi(h_{t-1}) + L h_{t-1} + u_t)
//   rate:     h_t = (1-a) h_{t-1} + a (phi(W h_{t-1} + u_t) + L h_{t-1})
//
// W is block diagonal (p blocks of n x n); L has k non-zero n x n blocks at
// (target, source) = L_index[r]. The whole time loop runs inside one call, the
// batch is split over threads in groups of up to kRows rows, and every group keeps
// its state in a padded per-area layout (n rounded up to the SIMD width) so that
// the inner product loops are plain vector FMAs over whole registers.
//
// Forward returns the states [T, B, p*n] (h_1..h_T) and, for the rate form when
// a backward pass will follow, the pre-activations z_t = W h_{t-1} + u_t.
// Backward runs backpropagation through time from h_0 and the saved states and
// returns the gradients of the drive, W, L_blocks and h_0. The weight gradients
// are reductions over all (t, b) of outer products; they are fused into the
// backward loop: every kStage (t, b) rows are staged in a small buffer and applied
// to per-thread accumulators (which stay in cache) as one rank-kStage update.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <string>
#include <vector>

#include "checks.h"
#include "flush_denormal.h"
#include "output.h"

namespace rnnofrnns {
namespace {

using at::vec::Vectorized;

constexpr int kRows = 4;    // batch rows that share one pass over the weights
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

// acc[b*acc_ld + r] += sum_{c<nred} x[b*x_rs + c*x_cs] * A[c*a_ld + r]  for b < NB, r < width.
// width is a multiple of the vector width; two vectors of outputs for NB rows are
// held in registers while A streams through once. The same routine serves the
// per-step products (rows = batch rows) and the weight-gradient updates (rows =
// rows of a block, reduction over staged (t, b) rows).
template <typename T, int NB>
inline void rows_matmul_acc(T* acc, int64_t acc_ld, const T* x, int64_t x_rs, int64_t x_cs, const T* A,
                            int64_t a_ld, int64_t nred, int64_t width) {
  using Vec = Vectorized<T>;
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
    case 4: rows_matmul_acc<T, 4>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 3: rows_matmul_acc<T, 3>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    case 2: rows_matmul_acc<T, 2>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
    default: rows_matmul_acc<T, 1>(acc, acc_ld, x, x_rs, x_cs, A, a_ld, nred, width); break;
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

template <typename T>
inline Vectorized<T> apply_phi(Nonlinearity nl, const Vectorized<T>& z) {
  switch (nl) {
    case Nonlinearity::Relu: return at::vec::maximum(z, Vectorized<T>(T(0)));
    case Nonlinearity::Tanh: return z.tanh();
    default: return z;
  }
}

// phi'(z) * g.
template <typename T>
inline Vectorized<T> apply_dphi(Nonlinearity nl, const Vectorized<T>& z, const Vectorized<T>& g) {
  using Vec = Vectorized<T>;
  switch (nl) {
    case Nonlinearity::Relu: return Vec::blendv(Vec(T(0)), g, z > Vec(T(0)));
    case Nonlinearity::Tanh: {
      const Vec th = z.tanh();
      return g * (Vec(T(1)) - th * th);
    }
    default: return g;
  }
}

// Copy `rows` rows of p areas of n values from an unpadded [.., p*n] tensor (row
// stride H) into the padded scratch (row stride p*np), and back.
template <typename T>
inline void gather_rows(T* dst, const T* src, int rows, int64_t p, int64_t n, int64_t np, int64_t H) {
  for (int b = 0; b < rows; ++b)
    for (int64_t i = 0; i < p; ++i)
      std::copy(src + b * H + i * n, src + b * H + i * n + n, dst + b * p * np + i * np);
}

template <typename T>
inline void scatter_rows(T* dst, const T* src, int rows, int64_t p, int64_t n, int64_t np, int64_t H) {
  for (int b = 0; b < rows; ++b)
    for (int64_t i = 0; i < p; ++i)
      std::copy(src + b * p * np + i * np, src + b * p * np + i * np + n, dst + b * H + i * n);
}

struct Shape {
  int64_t T, B, p, n, k, H;
};

template <typename T>
void forward_kernel(const T* drive, const T* W, const T* Lb, const int64_t* Lidx, const T* h0, T* states, T* pre,
                    const Shape s, const T alpha, const Nonlinearity nl, const Form form) {
  using Vec = Vectorized<T>;
  const int64_t np = padded_size<T>(s.n), HP = s.p * np, BH = s.B * s.H;
  const Layout lay{s.n, np, HP};
  const bool hopfield = form == Form::Hopfield;
  // Packed weights, transposed for the row-times-matrix microkernel. In the
  // hopfield form the factor alpha is folded into W; alpha always goes into L.
  std::vector<T> Wt, Lt;
  pack_blocks<T>(W, s.p, s.n, np, /*transpose=*/true, hopfield ? alpha : T(1), Wt);
  pack_blocks<T>(Lb, s.k, s.n, np, /*transpose=*/true, alpha, Lt);
  const int64_t groups = (s.B + kRows - 1) / kRows;

  // Each thread owns a contiguous range of batch groups and advances all of them
  // one step at a time, so every step streams one contiguous slab of the drive
  // and of the states.
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    FlushDenormalGuard ftz;
    const Vec va(alpha), v1a(T(1) - alpha);
    const int64_t ng = g1 - g0, gsz = kRows * HP;
    std::vector<T> buf(static_cast<size_t>((2 * ng + 2) * gsz), T(0));
    T* hp_all = buf.data();        // h_{t-1} of every group
    T* hn_all = hp_all + ng * gsz; // h_t of every group
    T* u = hn_all + ng * gsz;
    T* tmp = u + gsz;
    auto rows_of = [&](int64_t g) { return static_cast<int>(std::min<int64_t>(kRows, s.B - g * kRows)); };
    for (int64_t g = g0; g < g1; ++g)
      gather_rows(hp_all + (g - g0) * gsz, h0 + g * kRows * s.H, rows_of(g), s.p, s.n, np, s.H);
    for (int64_t t = 0; t < s.T; ++t) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t b0 = g * kRows;
        const int rows = rows_of(g);
        const int64_t len = rows * HP;
        T* hp = hp_all + (g - g0) * gsz;
        T* hn = hn_all + (g - g0) * gsz;
        gather_rows(u, drive + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        if (hopfield) {
          // hn = (1-a) h + a u + (aW) phi(h) + (aL) h
          for (int64_t j = 0; j < len; j += Vec::size()) {
            const Vec h = Vec::loadu(hp + j);
            apply_phi(nl, h).store(tmp + j);
            at::vec::fmadd(v1a, h, va * Vec::loadu(u + j)).store(hn + j);
          }
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, hn + i * np, tmp + i * np, Wt.data() + i * np * np);
        } else {
          // z = W h + u ; hn = (1-a) h + a phi(z) + (aL) h
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, u + i * np, hp + i * np, Wt.data() + i * np * np);
          if (pre) scatter_rows(pre + t * BH + b0 * s.H, u, rows, s.p, s.n, np, s.H);
          for (int64_t j = 0; j < len; j += Vec::size()) {
            const Vec h = Vec::loadu(hp + j);
            at::vec::fmadd(v1a, h, va * apply_phi(nl, Vec::loadu(u + j))).store(hn + j);
          }
        }
        for (int64_t r = 0; r < s.k; ++r)
          lay.block_step(rows, hn + Lidx[2 * r] * np, hp + Lidx[2 * r + 1] * np, Lt.data() + r * np * np);
        scatter_rows(states + t * BH + b0 * s.H, hn, rows, s.p, s.n, np, s.H);
      }
      std::swap(hp_all, hn_all);
    }
  });
}

template <typename T>
void backward_kernel(const T* grad_states, const T* W, const T* Lb, const int64_t* Lidx, const T* h0, const T* states,
                     const T* pre, T* grad_drive, T* grad_h0, T* grad_W, T* grad_L, const Shape s, const T alpha,
                     const Nonlinearity nl, const Form form) {
  using Vec = Vectorized<T>;
  const int64_t np = padded_size<T>(s.n), HP = s.p * np, BH = s.B * s.H, blk = np * np;
  const Layout lay{s.n, np, HP};
  const bool hopfield = form == Form::Hopfield;
  // Untransposed packed weights: the microkernel then computes x -> W^T x.
  std::vector<T> Wp, Lp;
  pack_blocks<T>(W, s.p, s.n, np, /*transpose=*/false, hopfield ? alpha : T(1), Wp);
  pack_blocks<T>(Lb, s.k, s.n, np, /*transpose=*/false, alpha, Lp);
  const int64_t groups = (s.B + kRows - 1) / kRows;
  // The batch groups are split into chunks whose number depends on B only, never on the
  // thread count. Each chunk stages and accumulates its own weight gradients [p + k blocks
  // of np x np], and the chunks are summed in a fixed order, so the results are bitwise
  // identical for any number of threads (a resumed run on another machine matches).
  const int64_t acc_size = (grad_W ? s.p : 0) * blk + (grad_L ? s.k : 0) * blk;
  const int64_t nchunks = std::min<int64_t>(groups, kChunks);
  std::vector<T> partial(static_cast<size_t>(std::max<int64_t>(nchunks * acc_size, 1)), T(0));

  auto run_chunk = [&](int64_t chunk) {
    const int64_t g0 = chunk * groups / nchunks, g1 = (chunk + 1) * groups / nchunks;
    const Vec va(alpha), v1a(T(1) - alpha);
    T* accW = partial.data() + chunk * acc_size;
    T* accL = accW + (grad_W ? s.p : 0) * blk;
    const int64_t ng = g1 - g0, gsz = kRows * HP;
    std::vector<T> buf(static_cast<size_t>((ng + 2) * gsz + 4 * kStage * HP), T(0));
    T* carry_all = buf.data();       // per group: dLoss/dh_t through the steps after t
    T* g = carry_all + ng * gsz;     // total gradient of h_t
    T* z = g + gsz;                  // pre-activation (rate form)
    // Staged rows for the weight gradients: a*g, h_{t-1}, the drive's gradient d
    // (rate form), phi(h_{t-1}) (hopfield form).
    T* st_ag = z + gsz;
    T* st_h = st_ag + kStage * HP;
    T* st_d = st_h + kStage * HP;
    T* st_f = st_d + kStage * HP;
    auto flush = [&](int64_t nred) {
      if (nred == 0) return;
      if (grad_L)
        for (int64_t r = 0; r < s.k; ++r)
          lay.block_outer(accL + r * blk, st_ag + Lidx[2 * r] * np, st_h + Lidx[2 * r + 1] * np, nred);
      if (grad_W)
        for (int64_t i = 0; i < s.p; ++i)
          lay.block_outer(accW + i * blk, (hopfield ? st_ag : st_d) + i * np, (hopfield ? st_f : st_h) + i * np, nred);
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
        gather_rows(g, grad_states + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        gather_rows(h, (t > 0 ? states + (t - 1) * BH : h0) + b0 * s.H, rows, s.p, s.n, np, s.H);
        if (!hopfield) gather_rows(z, pre + t * BH + b0 * s.H, rows, s.p, s.n, np, s.H);
        for (int64_t j = 0; j < len; j += Vec::size()) {
          const Vec gv = Vec::loadu(g + j) + Vec::loadu(carry + j);
          gv.store(g + j);
          (va * gv).store(ag + j);
          if (hopfield) {
            Vec(T(0)).store(carry + j);
            if (grad_W) apply_phi(nl, Vec::loadu(h + j)).store(st_f + slot * HP + j);
          } else {
            apply_dphi(nl, Vec::loadu(z + j), va * gv).store(d + j);
            (v1a * gv).store(carry + j);
          }
        }
        scatter_rows(grad_drive + t * BH + b0 * s.H, d, rows, s.p, s.n, np, s.H);
        if (hopfield) {
          // carry = (1-a) g + phi'(h) * ((aW)^T g) + (aL)^T g
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, carry + i * np, g + i * np, Wp.data() + i * blk);
          for (int64_t j = 0; j < len; j += Vec::size())
            at::vec::fmadd(v1a, Vec::loadu(g + j), apply_dphi(nl, Vec::loadu(h + j), Vec::loadu(carry + j)))
                .store(carry + j);
        } else {
          // carry = (1-a) g + W^T d + (aL)^T g
          for (int64_t i = 0; i < s.p; ++i) lay.block_step(rows, carry + i * np, d + i * np, Wp.data() + i * blk);
        }
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
  auto reduce = [&](T* out, int64_t count, int64_t offset) {
    for (int64_t b = 0; b < count; ++b)
      for (int64_t r = 0; r < s.n; ++r)
        for (int64_t c = 0; c < s.n; ++c) {
          T sum = T(0);
          for (int64_t ch = 0; ch < nchunks; ++ch) sum += partial[ch * acc_size + offset + b * blk + r * np + c];
          out[(b * s.n + r) * s.n + c] = sum;
        }
  };
  if (grad_W) reduce(grad_W, s.p, 0);
  if (grad_L) reduce(grad_L, s.k, (grad_W ? s.p : 0) * blk);
}

Shape shape_of(const at::Tensor& drive, const at::Tensor& W, const at::Tensor& L_blocks) {
  return Shape{drive.size(0), drive.size(1), W.size(0), W.size(1), L_blocks.size(0), drive.size(2)};
}

std::tuple<at::Tensor, at::Tensor> modular_rnn_fwd(const at::Tensor& drive_in, const at::Tensor& W_in,
                                                   const at::Tensor& L_in, const at::Tensor& idx_in,
                                                   const at::Tensor& h0_in, double alpha,
                                                   c10::string_view nonlinearity, c10::string_view form,
                                                   bool save_pre) {
  check_modular_rnn_inputs(drive_in, W_in, L_in, idx_in, h0_in, alpha, at::kCPU);
  const Nonlinearity nl = parse_nonlinearity(nonlinearity);
  const Form fm = parse_form(form);
  const at::Tensor drive = drive_in.contiguous(), W = W_in.contiguous(), Lb = L_in.contiguous();
  const at::Tensor idx = idx_in.contiguous(), h0 = h0_in.contiguous();
  const Shape s = shape_of(drive, W, Lb);
  at::Tensor states = new_output({s.T, s.B, s.H}, drive.options());
  const bool keep_pre = save_pre && fm == Form::Rate;
  at::Tensor pre = new_output({keep_pre ? s.T : 0, s.B, s.H}, drive.options());
  Shape written = s;
  written.T = rows_to_write("modular_rnn_fwd", s.T);  // all steps, except in the test of the NaN fill
  AT_DISPATCH_FLOATING_TYPES(drive.scalar_type(), "modular_rnn_fwd", [&] {
    forward_kernel<scalar_t>(drive.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                             Lb.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                             h0.const_data_ptr<scalar_t>(), states.mutable_data_ptr<scalar_t>(),
                             keep_pre ? pre.mutable_data_ptr<scalar_t>() : nullptr, written,
                             static_cast<scalar_t>(alpha), nl, fm);
  });
  return {states, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> modular_rnn_bwd(
    const at::Tensor& grad_states_in, const at::Tensor& W_in, const at::Tensor& L_in, const at::Tensor& idx_in,
    const at::Tensor& h0_in, const at::Tensor& states_in, const at::Tensor& pre_in, double alpha,
    c10::string_view nonlinearity, c10::string_view form, bool need_W_grad, bool need_L_grad) {
  const Nonlinearity nl = parse_nonlinearity(nonlinearity);
  const Form fm = parse_form(form);
  // states has the drive's shape [T, B, p*n]
  check_modular_rnn_inputs(states_in, W_in, L_in, idx_in, h0_in, alpha, at::kCPU);
  TORCH_CHECK_VALUE(grad_states_in.sizes() == states_in.sizes(), "modular_rnn_bwd: grad_states must have shape ",
                    states_in.sizes(), ", got ", grad_states_in.sizes());
  TORCH_CHECK_TYPE(grad_states_in.scalar_type() == states_in.scalar_type(), "modular_rnn_bwd: grad_states must be ",
                   states_in.scalar_type(), ", got ", grad_states_in.scalar_type());
  TORCH_CHECK_VALUE(grad_states_in.device() == states_in.device(), "modular_rnn_bwd: grad_states must be on ",
                    states_in.device(), ", got ", grad_states_in.device());
  if (fm == Form::Rate)
    TORCH_CHECK_VALUE(pre_in.sizes() == states_in.sizes() && pre_in.scalar_type() == states_in.scalar_type() &&
                          pre_in.device() == states_in.device(),
                      "modular_rnn_bwd: the rate form needs the saved pre-activations, shape ", states_in.sizes(),
                      ", got ", pre_in.sizes(), " (run the forward with save_pre=True)");
  const at::Tensor grad_states = grad_states_in.contiguous(), W = W_in.contiguous(), Lb = L_in.contiguous();
  const at::Tensor idx = idx_in.contiguous(), h0 = h0_in.contiguous(), states = states_in.contiguous();
  const at::Tensor pre = pre_in.contiguous();
  const Shape s = shape_of(states, W, Lb);
  at::Tensor grad_drive = new_output({s.T, s.B, s.H}, states.options());
  at::Tensor grad_h0 = new_output({s.B, s.H}, states.options());
  // Weight gradients that are not asked for are returned as zeros.
  at::Tensor grad_W = need_W_grad ? new_output(W.sizes(), W.options()) : new_zero_output(W.sizes(), W.options());
  at::Tensor grad_L = need_L_grad ? new_output(Lb.sizes(), Lb.options()) : new_zero_output(Lb.sizes(), Lb.options());
  Shape written = s;
  written.T = rows_to_write("modular_rnn_bwd", s.T);  // all steps, except in the test of the NaN fill
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "modular_rnn_bwd", [&] {
    backward_kernel<scalar_t>(grad_states.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                              Lb.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                              h0.const_data_ptr<scalar_t>(), states.const_data_ptr<scalar_t>(),
                              fm == Form::Rate ? pre.const_data_ptr<scalar_t>() : nullptr,
                              grad_drive.mutable_data_ptr<scalar_t>(), grad_h0.mutable_data_ptr<scalar_t>(),
                              need_W_grad ? grad_W.mutable_data_ptr<scalar_t>() : nullptr,
                              need_L_grad ? grad_L.mutable_data_ptr<scalar_t>() : nullptr, written,
                              static_cast<scalar_t>(alpha), nl, fm);
  });
  return {grad_drive, grad_W, grad_L, grad_h0};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("modular_rnn_fwd", &modular_rnn_fwd);
  m.impl("modular_rnn_bwd", &modular_rnn_bwd);
}

}  // namespace rnnofrnns
