// ensemble_loss: the whole training loss of the ensemble and its parameter gradients in one
// pass over the data (input projection, recurrence, readout, loss and backpropagation
// through time, fused):
//
//   h_t = W_x[i] x_t + W_h[i] s(h_{t-1}),  h_{-1} = 0,  s = relu (relu_hidden) or identity
//   loss[i] = mean_{b,t,f} (r(W_y[i]^T h_t + b[i]) - y_t)^2,  r = relu (relu_out) or identity
//
// Each instance is an independent small RNN, so the work splits into (instance, batch tile)
// pieces that never meet: a tile holds one batch row per SIMD lane (8 float32 / 4 float64
// with AVX2), its x and y rows are transposed once into lane-major [T, F, lanes] buffers
// and the forward states and backward gradients of the tile stay in the L1/L2 cache. Two
// tiles at a time go through the recurrences (fused_steps), which are the only serial part;
// readout and weight gradients run per tile over all steps. Memory
// traffic is one read of x and of y; nothing of size [T, B, I*n] is formed. Weight
// gradients accumulate per lane in vector registers/L1 and are reduced into float64 per
// (instance, chunk); the chunk count depends only on the sizes, so results do not depend
// on the thread count.
//
// The passes over a tile are in ensemble/recurrence.h, the weight-gradient blocks in
// ensemble/outer_blocks.h, the prefetch of the next tiles in ensemble/prefetch.h and the
// Hessenberg basis of a linear hidden layer in ensemble/hessenberg.h; this unit runs them over
// (instance, chunk) pieces and reduces their partial sums.

#include "ensemble/lanes.h"  // first: fixes the vector width of this unit

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "ensemble/hessenberg.h"
#include "ensemble/outer_blocks.h"
#include "ensemble/prefetch.h"
#include "ensemble/profile.h"
#include "ensemble/recurrence.h"
#include "ensemble/simd.h"
#include "flush_denormal.h"
#include "output.h"

namespace rnnofrnns {
namespace {

// The batch tiles [tile0, tile1) of one instance. NN / FF > 0 fix the hidden size / feature
// count at compile time, so that the per-step vectors (states, readout, carried gradient)
// live in registers; 0 means "given at run time" (at most kMaxEnsembleDim). HESS (a linear
// hidden layer, NN > 0): the recurrences run in the basis of HessenbergBasis.
template <typename scalar_t, int64_t NN, int64_t FF, bool HESS = false>
void ensemble_loss_chunk(const scalar_t* xs, const scalar_t* ys, const scalar_t* wx, const scalar_t* wh,
                         const scalar_t* wy, const scalar_t* bias, const scalar_t* x_end, const scalar_t* y_end,
                         const scalar_t* next_xs, const scalar_t* next_ys,
                         int64_t n_rt, int64_t F_rt, int64_t B, int64_t T,
                         int64_t tile0, int64_t tile1, bool relu_hidden, bool relu_out, bool need_grad,
                         double grad_scale, scalar_t* buf, double* out_loss, double* gwx, double* gwh, double* gwy,
                         double* gb) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  constexpr int64_t NC = NN > 0 ? NN : kMaxEnsembleDim, FC = FF > 0 ? FF : kMaxEnsembleDim;
  const int64_t n = NN > 0 ? NN : n_rt, F = FF > 0 ? FF : F_rt;
  // Two tiles at a time go through the recurrence, in output blocks of at most 5 units (2 x 5
  // accumulators fit in the registers; a tile left over alone takes all NN units at once).
  constexpr int64_t kGroupBlock = NN > 0 && NN <= 5 ? NN : 5;
  // The split backward of relu_hidden (below): the serial pass keeps its carried vector in
  // registers for small hidden sizes, W_y go works on TB steps x CB outputs at once.
  constexpr bool kCarryInRegisters = NN > 0 && NN <= 6;
  constexpr int64_t TB = matvec_steps(NN), CB = matvec_outputs(NN), RB = FF > 0 && FF <= 4 ? FF : 4;
  // Scalar copies of the weights (each FMA broadcasts its weight from L1), then per tile of a
  // group lane-major [T, F, L] inputs, targets and readout gradients and [T, n, L] states and
  // state gradients.
  scalar_t* wxb = buf;
  scalar_t* whb = wxb + n * F;
  scalar_t* wyb = whb + n * n;
  scalar_t* xt[kTilesPerGroup];
  scalar_t* yt[kTilesPerGroup];
  scalar_t* go[kTilesPerGroup];
  scalar_t* hs[kTilesPerGroup];
  scalar_t* gp[kTilesPerGroup];
  // The vector buffers start on a cache line (a vector load that straddles two lines costs two
  // loads); buf has room for the shift.
  scalar_t* next = reinterpret_cast<scalar_t*>((reinterpret_cast<uintptr_t>(wyb + n * F) + 63) & ~uintptr_t(63));
  for (int64_t g = 0; g < kTilesPerGroup; ++g) {
    xt[g] = next;
    yt[g] = xt[g] + T * F * L;
    go[g] = yt[g] + T * F * L;
    hs[g] = go[g] + T * F * L;
    gp[g] = hs[g] + T * n * L;
    next = gp[g] + T * n * L;
  }
  // Per-lane accumulators of the chunk, summed over the lanes into float64 at its end:
  // loss [L], W_x, W_h, W_y and b gradients [n*F | n*n | n*F | F, L].
  scalar_t* acc = next;
  scalar_t* aWx = acc + L;
  scalar_t* aWh = aWx + n * F * L;
  scalar_t* aWy = aWh + n * n * L;
  scalar_t* ab = aWy + n * F * L;
  std::fill(acc, ab + F * L, scalar_t(0));
  static_assert(!HESS || NN > 0, "the Hessenberg basis needs a compile-time hidden size");
  static_assert(!HESS || FF > 0, "the Hessenberg basis needs a compile-time feature count");
  HessenbergBasis<HESS ? NN : 1, HESS ? FF : 1> basis;
  if constexpr (HESS) {
    basis.set(wx, wh, wy, wxb, whb, wyb);
  } else {
    std::copy(wx, wx + n * F, wxb);
    std::copy(wh, wh + n * n, whb);
    std::copy(wy, wy + n * F, wyb);
  }
  constexpr int64_t HN = HESS ? NN : 0;
  auto W = [](const scalar_t* b, int64_t q) { return Vec(b[q]); };
  const Vec zero(scalar_t(0));
  auto run_group = [&](auto G_tag, int64_t tile) __attribute__((always_inline)) {
    constexpr int64_t G = decltype(G_tag)::value;
    RNNOFRNNS_PASS_CLOCK_START
    constexpr int64_t JB = G > 1 || NN <= 0 ? kGroupBlock : NN;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t b0 = (tile + g) * L, nrows = std::min<int64_t>(L, B - b0);
      transpose_rows(xs + b0 * T * F, T * F, nrows, T * F, xt[g]);
      transpose_rows(ys + b0 * T * F, T * F, nrows, T * F, yt[g]);
      // Lanes past the last batch row see x = 0, hence h = 0 and the output r(b) exactly;
      // their targets are set to that output, so that their error and gradients are exactly 0.
      for (int64_t l = nrows; l < L; ++l)
        for (int64_t q = 0; q < T * F; ++q) {
          const scalar_t bf = bias[q % F];
          yt[g][q * L + l] = relu_out && bf < 0 ? scalar_t(0) : bf;
        }
    }
    RNNOFRNNS_PASS_DONE(0)  // transposes
    // The recurrence passes call pf.step() once per step: T calls forward, T backward (the
    // split backward of relu_hidden: 2T - 1 per tile).
    const int64_t bwd_calls = relu_hidden ? G * (2 * T - 1) : T;
    // The rows of tile u of this piece, or past its end those of the piece this thread runs next.
    const int64_t te = L * T * F;
    auto rows = [&](const scalar_t* here, const scalar_t* then, int64_t u) -> const scalar_t* {
      return u < tile1 ? here + u * te : then ? then + (u - tile1) * te : nullptr;
    };
    TilePrefetch<scalar_t> pf(rows(xs, next_xs, tile + G), rows(ys, next_ys, tile + G), rows(xs, next_xs, tile + 2 * G),
                              rows(ys, next_ys, tile + 2 * G), x_end, y_end, G, te, T, need_grad ? bwd_calls : 0,
                              n < kTwoLevelBelow);
    // Forward: (a) h_t = W_x x_t + W_h s(h_{t-1}), (b) readout, error and its gradient go_t.
    fused_steps<scalar_t, G, JB, false, HN>(wxb, whb, xt, hs, n, F, T, relu_hidden, pf);
    RNNOFRNNS_PASS_DONE(1)  // forward recurrence
    for (int64_t g = 0; g < G; ++g) {
      Vec lossv[2] = {zero, zero};  // two accumulators: the squared errors are not one chain
      int64_t t = 0;
      for (; t + 2 <= T; t += 2)
        readout_steps<scalar_t, 2, RB, HESS>(wyb, bias, hs[g], yt[g], go[g], n, F, t, relu_out, lossv);
      if (t < T) readout_steps<scalar_t, 1, RB, HESS>(wyb, bias, hs[g], yt[g], go[g], n, F, t, relu_out, lossv);
      (Vec::loadu(acc) + (lossv[0] + lossv[1])).store(acc);
    }
    RNNOFRNNS_PASS_DONE(2)  // readout and loss
    if (!need_grad) return;
    pf.start_near();
    // Backpropagation through time: gp_t = W_y go_t + s'(h_t) W_h^T gp_{t+1}.
    if (!relu_hidden) {
      fused_steps<scalar_t, G, JB, true, HN>(wyb, whb, go, gp, n, F, T, false, pf);
    } else {
      // The relu mask applies to the carried part only, so it runs as (c) gp_t = W_y go_t for
      // all t, then (d) gp_t += carry, carry = s'(h_{t-1}) W_h^T gp_t, one tile at a time.
      for (int64_t g = 0; g < G; ++g) {
        lane_matvec<scalar_t, CB, TB>(wyb, go[g], gp[g], n, F, 0, T, pf);
        Vec gcur[kCarryInRegisters ? NC : 1];
        if constexpr (kCarryInRegisters) {
          UNROLL for (int64_t j = 0; j < n; ++j) gcur[j] = Vec::loadu(gp[g] + ((T - 1) * n + j) * L);
        }
        for (int64_t t = T - 1; t > 0; --t) {
          pf.step();
          Vec c[NC];
          UNROLL for (int64_t k = 0; k < n; ++k) c[k] = zero;
          UNROLL for (int64_t j = 0; j < n; ++j) {
            const Vec gj = kCarryInRegisters ? gcur[kCarryInRegisters ? j : 0] : Vec::loadu(gp[g] + (t * n + j) * L);
            UNROLL for (int64_t k = 0; k < n; ++k) c[k] = at::vec::fmadd(W(whb, j * n + k), gj, c[k]);
          }
          scalar_t* gprev = gp[g] + (t - 1) * n * L;
          const scalar_t* hprev = hs[g] + (t - 1) * n * L;
          UNROLL for (int64_t k = 0; k < n; ++k) {
            const Vec gk = Vec::loadu(gprev + k * L) + (c[k] & (Vec::loadu(hprev + k * L) > zero));
            gk.store(gprev + k * L);
            if constexpr (kCarryInRegisters) gcur[k] = gk;
          }
        }
      }
    }
    RNNOFRNNS_PASS_DONE(3)  // backward recurrence
    // Weight gradients: sums over steps and lanes of outer products.
    for (int64_t g = 0; g < G; ++g) {
      // W_x: [n, F] += gp_t x_t^T, W_h: [n, n] += gp_t s(h_{t-1})^T, W_y: [n, F] += h_t go_t^T, in
      // this order: gp, just written by the backward pass, first, while it is still in L1.
      outer_tiled<scalar_t, false>(xt[g], F * L, F, gp[g], n * L, n, T, aWx, 1, F);
      if (T > 1) {
        if (relu_hidden) outer_tiled<scalar_t, true>(gp[g] + n * L, n * L, n, hs[g], n * L, n, T - 1, aWh, n, 1);
        else outer_tiled<scalar_t, false>(gp[g] + n * L, n * L, n, hs[g], n * L, n, T - 1, aWh, n, 1);
      }
      outer_tiled<scalar_t, false>(go[g], F * L, F, hs[g], n * L, n, T, aWy, 1, F);
      Vec sb[FC];  // one accumulator per feature: F independent chains instead of one
      UNROLL for (int64_t f = 0; f < F; ++f) sb[f] = zero;
      for (int64_t t = 0; t < T; ++t)
        UNROLL for (int64_t f = 0; f < F; ++f) sb[f] = sb[f] + Vec::loadu(go[g] + (t * F + f) * L);
      UNROLL for (int64_t f = 0; f < F; ++f) (Vec::loadu(ab + f * L) + sb[f]).store(ab + f * L);
    }
    RNNOFRNNS_PASS_DONE(4)  // weight gradients
  };
  int64_t tile = tile0;
  for (; tile + kTilesPerGroup <= tile1; tile += kTilesPerGroup)
    run_group(std::integral_constant<int64_t, kTilesPerGroup>{}, tile);
  for (; tile < tile1; ++tile) run_group(std::integral_constant<int64_t, 1>{}, tile);
  auto flush = [&](const scalar_t* a, double* dst, int64_t count, double factor) {
    for (int64_t q = 0; q < count; ++q) {
      double s = 0;
      for (int64_t l = 0; l < L; ++l) s += static_cast<double>(a[q * L + l]);
      dst[q] += factor * s;
    }
  };
  flush(acc, out_loss, 1, 1.0);
  if (need_grad) {
    flush(aWx, gwx, n * F, grad_scale);
    flush(aWh, gwh, n * n, grad_scale);
    flush(aWy, gwy, n * F, grad_scale);
    flush(ab, gb, F, grad_scale);
    if constexpr (HESS) basis.gradients_back(gwx, gwh, gwy);  // this piece's partials only
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ensemble_loss(
    const at::Tensor& x_in, const at::Tensor& Wx_in, const at::Tensor& Wh_in, const at::Tensor& Wy_in,
    const at::Tensor& b_in, const at::Tensor& y_in, bool relu_hidden, bool relu_out, bool need_grad) {
  const char* op = "ensemble_loss";
  const EnsDims d = check_ensemble_x_w(op, y_in, Wy_in, "y", "W_y");
  check_float_tensors(op, {{"x", &x_in}, {"W_x", &Wx_in}, {"W_h", &Wh_in}, {"W_y", &Wy_in}, {"b", &b_in}, {"y", &y_in}});
  TORCH_CHECK_VALUE(x_in.sizes() == y_in.sizes(), op, ": x must have the shape of y [I, B, T, F] = ", y_in.sizes(),
                    ", got ", x_in.sizes());
  TORCH_CHECK_VALUE(Wx_in.sizes() == Wy_in.sizes(), op, ": W_x must be [I, n, F] = ", Wy_in.sizes(), ", got ",
                    Wx_in.sizes());
  TORCH_CHECK_VALUE(Wh_in.dim() == 3 && Wh_in.size(0) == d.I && Wh_in.size(1) == d.n && Wh_in.size(2) == d.n, op,
                    ": W_h must be [I, n, n] = [", d.I, ", ", d.n, ", ", d.n, "], got shape ", Wh_in.sizes());
  TORCH_CHECK_VALUE(b_in.dim() == 2 && b_in.size(0) == d.I && b_in.size(1) == d.F, op, ": b must be [I, F] = [", d.I,
                    ", ", d.F, "], got shape ", b_in.sizes());
  TORCH_CHECK_VALUE(d.I >= 1 && d.B >= 1 && d.T >= 1 && d.F >= 1 && d.n >= 1, op,
                    ": needs I, B, T, F, n >= 1, got y of shape ", y_in.sizes(), " and W_y of shape ", Wy_in.sizes());
  TORCH_CHECK_VALUE(d.n <= kMaxEnsembleDim && d.F <= kMaxEnsembleDim, op,
                    ": the hidden size n and the feature count F must be at most ", kMaxEnsembleDim, ", got n = ", d.n,
                    " and F = ", d.F);
  // Data shared by all instances may come as an expanded view (instance stride 0).
  const bool shared = d.I > 1 && x_in.stride(0) == 0 && x_in.select(0, 0).is_contiguous();
  const at::Tensor x = shared ? x_in : x_in.contiguous();
  const int64_t x_inst_stride = shared ? 0 : d.B * d.T * d.F;
  const at::Tensor y = y_in.contiguous(), Wx = Wx_in.contiguous(), Wh = Wh_in.contiguous(),
                   Wy = Wy_in.contiguous(), bias = b_in.contiguous();
  const auto opts = y.options();
  const int64_t gsz = need_grad ? d.I : 0;
  at::Tensor loss = new_output({d.I}, opts), gWx = new_output({gsz, d.n, d.F}, opts),
             gWh = new_output({gsz, d.n, d.n}, opts), gWy = new_output({gsz, d.n, d.F}, opts),
             gb = new_output({gsz, d.F}, opts);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "ensemble_loss", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    constexpr int64_t L = Vec::size();
    const int64_t tiles = (d.B + L - 1) / L;
    // Enough (instance, chunk) pieces for the threads when there are few instances; a
    // function of the sizes only.
    const int64_t chunks = std::min<int64_t>(tiles, std::max<int64_t>(1, (32 + d.I - 1) / d.I));
    const int64_t pieces = d.I * chunks;
    // Per-piece float64 partials, summed over chunks at the end in a fixed order.
    const int64_t per = 1 + (need_grad ? 2 * d.n * d.F + d.n * d.n + d.F : 0);
    std::vector<double> partial(static_cast<size_t>(pieces * per), 0.0);
    // Scalar weights, room for aligning the vector buffers, the buffers of a group of tiles
    // and the per-lane accumulators (see ensemble_loss_chunk).
    const int64_t buf_len = 2 * d.n * d.F + d.n * d.n + 64 / static_cast<int64_t>(sizeof(scalar_t)) +
                            kTilesPerGroup * (3 * d.T * d.F + 2 * d.T * d.n) * L +
                            (1 + 2 * d.n * d.F + d.n * d.n + d.F) * L;
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* ys = y.const_data_ptr<scalar_t>();
    const scalar_t* wx = Wx.const_data_ptr<scalar_t>();
    const scalar_t* wh = Wh.const_data_ptr<scalar_t>();
    const scalar_t* wy = Wy.const_data_ptr<scalar_t>();
    const scalar_t* bs = bias.const_data_ptr<scalar_t>();
    const double grad_scale = 2.0 / static_cast<double>(d.B * d.T * d.F);  // d loss / d output
    const scalar_t* x_end = xs + (shared ? 1 : d.I) * d.B * d.T * d.F;
    const scalar_t* y_end = ys + d.I * d.B * d.T * d.F;
    auto run = [&](auto NN_tag, auto FF_tag, auto HESS_tag) {
      constexpr int64_t NN = decltype(NN_tag)::value, FF = decltype(FF_tag)::value;
      constexpr bool HESS = decltype(HESS_tag)::value;
      // Pieces are handed out one at a time rather than split evenly up front: on a shared
      // machine one core is often slower than the other, and a static split waits for it.
      // Each piece writes its own partials, so the result does not depend on who ran it.
      std::atomic<int64_t> next_piece{0};
      at::parallel_for(0, std::min<int64_t>(pieces, at::get_num_threads()), 1, [&](int64_t, int64_t) {
        FlushDenormalGuard ftz;
        std::vector<scalar_t> buf(static_cast<size_t>(buf_len));
        // The next piece is claimed when this one starts, so that this one's last groups can
        // prefetch its first rows (the piece after in memory is likely the other thread's).
        auto first_rows = [&](const scalar_t* data, int64_t inst_stride, int64_t piece) -> const scalar_t* {
          if (piece >= pieces) return nullptr;
          return data + (piece / chunks) * inst_stride + tiles * (piece % chunks) / chunks * L * d.T * d.F;
        };
        for (int64_t piece = next_piece++, following; piece < pieces; piece = following) {
          following = next_piece++;
          const int64_t i = piece / chunks, c = piece % chunks;
          double* part = partial.data() + piece * per;
          const int64_t nF = d.n * d.F;
          ensemble_loss_chunk<scalar_t, NN, FF, HESS>(
              xs + i * x_inst_stride, ys + i * d.B * d.T * d.F, wx + i * nF, wh + i * d.n * d.n, wy + i * nF,
              bs + i * d.F, x_end, y_end, first_rows(xs, x_inst_stride, following),
              first_rows(ys, d.B * d.T * d.F, following), d.n, d.F, d.B, d.T, tiles * c / chunks,
              tiles * (c + 1) / chunks, relu_hidden, relu_out, need_grad, grad_scale, buf.data(), part, part + 1,
              part + 1 + nF, part + 1 + nF + d.n * d.n, part + 1 + 2 * nF + d.n * d.n);
        }
      });
    };
    using std::integral_constant;
    // A linear hidden layer of a specialised size n >= 5 runs in the Hessenberg basis (at n = 2
    // there are no structural zeros).
    const std::false_type dense;
    const std::true_type hess;
    const integral_constant<int64_t, 8> f8;
    auto run_n = [&](auto NN_tag) {
      if constexpr (decltype(NN_tag)::value < 5) run(NN_tag, f8, dense);
      else if (relu_hidden) run(NN_tag, f8, dense);
      else run(NN_tag, f8, hess);
    };
    if (d.F == 8 && d.n == 2) run_n(integral_constant<int64_t, 2>{});
    else if (d.F == 8 && d.n == 5) run_n(integral_constant<int64_t, 5>{});
    else if (d.F == 8 && d.n == 10) run_n(integral_constant<int64_t, 10>{});
    else if (d.F == 8) run(integral_constant<int64_t, 0>{}, f8, dense);
    else run(integral_constant<int64_t, 0>{}, integral_constant<int64_t, 0>{}, dense);
    // The partials of each output, summed over the chunks in a fixed order in float64; the
    // loss is their mean.
    const double count = static_cast<double>(d.B * d.T * d.F);
    scalar_t* ls = loss.mutable_data_ptr<scalar_t>();
    scalar_t* g[4] = {need_grad ? gWx.mutable_data_ptr<scalar_t>() : nullptr,
                      need_grad ? gWh.mutable_data_ptr<scalar_t>() : nullptr,
                      need_grad ? gWy.mutable_data_ptr<scalar_t>() : nullptr,
                      need_grad ? gb.mutable_data_ptr<scalar_t>() : nullptr};
    const int64_t sizes[4] = {d.n * d.F, d.n * d.n, d.n * d.F, d.F};
    const int64_t I_write = rows_to_write(op, d.I);  // all instances, except in the test of the NaN fill
    for (int64_t i = 0; i < I_write; ++i) {
      const double* first = partial.data() + i * chunks * per;
      double s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += first[c * per];
      ls[i] = static_cast<scalar_t>(s / count);
      if (!need_grad) continue;
      int64_t off = 1;
      for (int q = 0; q < 4; ++q) {
        for (int64_t e = 0; e < sizes[q]; ++e) {
          double v = 0;
          for (int64_t c = 0; c < chunks; ++c) v += first[c * per + off + e];
          g[q][i * sizes[q] + e] = static_cast<scalar_t>(v);
        }
        off += sizes[q];
      }
    }
  });
  RNNOFRNNS_PASS_REPORT()
  return {loss, gWx, gWh, gWy, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("ensemble_loss", &ensemble_loss);
}

}  // namespace rnnofrnns
