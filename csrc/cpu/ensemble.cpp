// Fused input projection and readout+loss of an ensemble of I small RNNs (one area each).
//
//   drive[t, b, i*n + j] = sum_f W_x[i, j, f] x[i, b, t, f]                       (ensemble_drive)
//   out[i, b, t, f]      = sigma(b[i, f] + sum_j h[t, b, i*n + j] W_y[i, j, f])   (ensemble_readout_loss)
//   loss[i]              = mean_{b,t,f} (out - y)^2
//
// Both walk tiles of (one batch row b, up to kInstTile instances, all T steps): per
// step the tile's slice of the [T, B, I*n] state is contiguous and every instance's
// x / y rows are read as contiguous [T, F] streams, which keeps TLB and cache misses
// rare (walking instances inside one (t, b) row instead jumps 512 KB per instance). The
// readout+loss op never forms the [I, B, T, F] output: it
// returns the per-instance losses together with their gradients with respect to h, W_y
// and b (the loss is the end of the graph, so its backward only rescales them by the
// incoming per-instance gradient). Weight gradients are reduced over a fixed number of
// row chunks (independent of the thread count), so results are deterministic.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "flush_denormal.h"

namespace rnnofrnns {
namespace {

constexpr int64_t kRowChunks = 16;

void check_cpu_float(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> ts) {
  const auto dt = ts.begin()->second->scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble, op, ": ", ts.begin()->first,
                   " must be float32 or float64, got ", dt);
  for (const auto& [name, t] : ts) {
    TORCH_CHECK_TYPE(t->scalar_type() == dt, op, ": ", name, " must have the dtype ", dt, ", got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device().type() == at::kCPU, op, ": ", name, " must be on the CPU, got ", t->device());
  }
}

struct EnsDims {
  int64_t I, B, T, F, n;
};

EnsDims check_x_w(const char* op, const at::Tensor& x, const at::Tensor& W, const char* xname, const char* wname) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": ", xname, " must be 4-D [I, B, T, F], got shape ", x.sizes());
  TORCH_CHECK_VALUE(W.dim() == 3 && W.size(0) == x.size(0) && W.size(2) == x.size(3), op, ": ", wname,
                    " must be [I, n, F] = [", x.size(0), ", n, ", x.size(3), "], got shape ", W.sizes());
  return {x.size(0), x.size(1), x.size(2), x.size(3), W.size(1)};
}

constexpr int64_t kInstTile = 64;

int64_t num_chunks(const EnsDims& d) { return std::min<int64_t>(kRowChunks, d.B); }

// fn(chunk, t, b, i) for every (t, b, i): the batch rows are split into a fixed number of
// chunks (one accumulator each), and inside a chunk tiles of instances x all steps.
template <typename Fn>
void for_tiles(const EnsDims& d, const Fn& fn) {
  const int64_t chunks = num_chunks(d);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t b = d.B * c / chunks; b < d.B * (c + 1) / chunks; ++b)
        for (int64_t i0 = 0; i0 < d.I; i0 += kInstTile)
          for (int64_t t = 0; t < d.T; ++t)
            for (int64_t i = i0; i < std::min(d.I, i0 + kInstTile); ++i) fn(c, t, b, i);
  });
}

at::Tensor ensemble_drive_fwd(const at::Tensor& x_in, const at::Tensor& W_in) {
  const EnsDims d = check_x_w("ensemble_drive_fwd", x_in, W_in, "x", "W_x");
  check_cpu_float("ensemble_drive_fwd", {{"x", &x_in}, {"W_x", &W_in}});
  const at::Tensor x = x_in.contiguous(), W = W_in.contiguous();
  at::Tensor drive = at::empty({d.T, d.B, d.I * d.n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ensemble_drive_fwd", [&] {
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* w = W.const_data_ptr<scalar_t>();
    scalar_t* out = drive.mutable_data_ptr<scalar_t>();
    using Vec = at::vec::Vectorized<scalar_t>;
    if (d.F == Vec::size()) {  // one SIMD register per x row
      for_tiles(d, [&](int64_t, int64_t t, int64_t b, int64_t i) {
        scalar_t* o = out + (t * d.B + b) * d.I * d.n + i * d.n;
        const Vec xv = Vec::loadu(xs + ((i * d.B + b) * d.T + t) * d.F);
        const scalar_t* wi = w + i * d.n * d.F;
        for (int64_t j = 0; j < d.n; ++j)
          o[j] = at::vec::vec_reduce_all<scalar_t>([](Vec& a, Vec& c) { return a + c; },
                                                   Vec::loadu(wi + j * d.F) * xv);
      });
      return;
    }
    for_tiles(d, [&](int64_t, int64_t t, int64_t b, int64_t i) {
      scalar_t* o = out + (t * d.B + b) * d.I * d.n + i * d.n;
      const scalar_t* xr = xs + ((i * d.B + b) * d.T + t) * d.F;
      const scalar_t* wi = w + i * d.n * d.F;
      for (int64_t j = 0; j < d.n; ++j) {
        scalar_t s = 0;
        for (int64_t f = 0; f < d.F; ++f) s += wi[j * d.F + f] * xr[f];
        o[j] = s;
      }
    });
  });
  return drive;
}

std::tuple<at::Tensor, at::Tensor> ensemble_drive_bwd(const at::Tensor& gd_in, const at::Tensor& x_in,
                                                      const at::Tensor& W_in, bool need_x, bool need_W) {
  const EnsDims d = check_x_w("ensemble_drive_bwd", x_in, W_in, "x", "W_x");
  check_cpu_float("ensemble_drive_bwd", {{"x", &x_in}, {"W_x", &W_in}, {"grad_drive", &gd_in}});
  TORCH_CHECK_VALUE(gd_in.dim() == 3 && gd_in.size(0) == d.T && gd_in.size(1) == d.B && gd_in.size(2) == d.I * d.n,
                    "ensemble_drive_bwd: grad_drive must be [T, B, I*n] = [", d.T, ", ", d.B, ", ", d.I * d.n,
                    "], got shape ", gd_in.sizes());
  const at::Tensor gd = gd_in.contiguous(), x = x_in.contiguous(), W = W_in.contiguous();
  at::Tensor gx = need_x ? at::empty_like(x) : at::empty({0}, x.options());  // not requested: empty
  at::Tensor gW = at::zeros_like(W);
  const int64_t chunks = num_chunks(d);
  at::Tensor partial = at::zeros({need_W ? chunks : 0, d.I, d.n, d.F}, W.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ensemble_drive_bwd", [&] {
    const scalar_t* g = gd.const_data_ptr<scalar_t>();
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* w = W.const_data_ptr<scalar_t>();
    scalar_t* gxs = need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* part = need_W ? partial.mutable_data_ptr<scalar_t>() : nullptr;
    using Vec = at::vec::Vectorized<scalar_t>;
    if (d.F == Vec::size()) {  // dW[j] += g_j x and dx = sum_j g_j W[j]: vector FMAs over f
      for_tiles(d, [&](int64_t c, int64_t t, int64_t b, int64_t i) {
        const int64_t xoff = ((i * d.B + b) * d.T + t) * d.F;
        const scalar_t* gi = g + (t * d.B + b) * d.I * d.n + i * d.n;
        if (part) {
          scalar_t* ai = part + (c * d.I + i) * d.n * d.F;
          const Vec xv = Vec::loadu(xs + xoff);
          for (int64_t j = 0; j < d.n; ++j)
            at::vec::fmadd(Vec(gi[j]), xv, Vec::loadu(ai + j * d.F)).store(ai + j * d.F);
        }
        if (gxs) {
          const scalar_t* wi = w + i * d.n * d.F;
          Vec acc(scalar_t(0));
          for (int64_t j = 0; j < d.n; ++j) acc = at::vec::fmadd(Vec(gi[j]), Vec::loadu(wi + j * d.F), acc);
          acc.store(gxs + xoff);
        }
      });
      return;
    }
    for_tiles(d, [&](int64_t c, int64_t t, int64_t b, int64_t i) {
      const int64_t xoff = ((i * d.B + b) * d.T + t) * d.F;
      const scalar_t* gi = g + (t * d.B + b) * d.I * d.n + i * d.n;
      if (part) {
        scalar_t* ai = part + (c * d.I + i) * d.n * d.F;
        const scalar_t* xr = xs + xoff;
        for (int64_t j = 0; j < d.n; ++j)
          for (int64_t f = 0; f < d.F; ++f) ai[j * d.F + f] += gi[j] * xr[f];
      }
      if (gxs) {
        const scalar_t* wi = w + i * d.n * d.F;
        for (int64_t f = 0; f < d.F; ++f) {
          scalar_t s = 0;
          for (int64_t j = 0; j < d.n; ++j) s += gi[j] * wi[j * d.F + f];
          gxs[xoff + f] = s;
        }
      }
    });
  });
  if (need_W) gW = partial.sum(0);
  return {gx, gW};
}

// All ones in the lanes where o > 0 or o is NaN, zero elsewhere: relu(o) = o & mask and
// relu'(o) e = e & mask (a NaN output stays NaN in the loss and in its gradient). One compare
// and two bitwise ands instead of max (with its NaN check: max, compare, or), compare and
// blend, which all compete with the FMAs for the same two pipes of this core (rdtsc profile,
// hidden 10, one thread: readout and loss 24.2-24.6 -> 20.8-21.2 Mcycles per call).
template <typename scalar_t>
inline __attribute__((always_inline)) at::vec::Vectorized<scalar_t> live_mask(const at::vec::Vectorized<scalar_t>& o) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<scalar_t, float> && at::vec::Vectorized<scalar_t>::size() == 8)
    return _mm256_cmp_ps(o, _mm256_setzero_ps(), _CMP_NLE_UQ);
  if constexpr (std::is_same_v<scalar_t, double> && at::vec::Vectorized<scalar_t>::size() == 4)
    return _mm256_cmp_pd(o, _mm256_setzero_pd(), _CMP_NLE_UQ);
#endif
  const at::vec::Vectorized<scalar_t> zero(scalar_t(0));
  return (o > zero) | o.isnan();
}

// relu(v) = max(0, v) in one instruction (at::vec::maximum adds a NaN check: three). A NaN v
// stays NaN: maxps returns its second operand when either one is NaN.
template <typename scalar_t>
inline __attribute__((always_inline)) at::vec::Vectorized<scalar_t> relu_vec(const at::vec::Vectorized<scalar_t>& v) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<scalar_t, float> && at::vec::Vectorized<scalar_t>::size() == 8)
    return _mm256_max_ps(_mm256_setzero_ps(), v);
  if constexpr (std::is_same_v<scalar_t, double> && at::vec::Vectorized<scalar_t>::size() == 4)
    return _mm256_max_pd(_mm256_setzero_pd(), v);
#endif
  return at::vec::maximum(v, at::vec::Vectorized<scalar_t>(scalar_t(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ensemble_readout_loss(
    const at::Tensor& h_in, const at::Tensor& Wy_in, const at::Tensor& b_in, const at::Tensor& y_in, bool relu) {
  const EnsDims d = check_x_w("ensemble_readout_loss", y_in, Wy_in, "y", "W_y");
  check_cpu_float("ensemble_readout_loss", {{"h", &h_in}, {"W_y", &Wy_in}, {"b", &b_in}, {"y", &y_in}});
  TORCH_CHECK_VALUE(h_in.dim() == 3 && h_in.size(0) == d.T && h_in.size(1) == d.B && h_in.size(2) == d.I * d.n,
                    "ensemble_readout_loss: h must be [T, B, I*n] = [", d.T, ", ", d.B, ", ", d.I * d.n,
                    "] for y of shape ", y_in.sizes(), " and W_y of shape ", Wy_in.sizes(), ", got ", h_in.sizes());
  TORCH_CHECK_VALUE(b_in.dim() == 2 && b_in.size(0) == d.I && b_in.size(1) == d.F,
                    "ensemble_readout_loss: b must be [I, F] = [", d.I, ", ", d.F, "], got shape ", b_in.sizes());
  const at::Tensor h = h_in.contiguous(), Wy = Wy_in.contiguous(), bias = b_in.contiguous(), y = y_in.contiguous();
  const int64_t chunks = num_chunks(d);
  at::Tensor gh = at::empty_like(h);
  at::Tensor pW = at::zeros({chunks, d.I, d.n, d.F}, Wy.options());
  at::Tensor pb = at::zeros({chunks, d.I, d.F}, Wy.options());
  at::Tensor pl = at::zeros({chunks, d.I}, Wy.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "ensemble_readout_loss", [&] {
    const scalar_t* hs = h.const_data_ptr<scalar_t>();
    const scalar_t* w = Wy.const_data_ptr<scalar_t>();
    const scalar_t* bs = bias.const_data_ptr<scalar_t>();
    const scalar_t* ys = y.const_data_ptr<scalar_t>();
    scalar_t* ghs = gh.mutable_data_ptr<scalar_t>();
    const scalar_t scale = scalar_t(2) / static_cast<scalar_t>(d.B * d.T * d.F);
    scalar_t* pWs = pW.mutable_data_ptr<scalar_t>();
    scalar_t* pbs = pb.mutable_data_ptr<scalar_t>();
    double* pls = pl.mutable_data_ptr<double>();
    constexpr int64_t kMaxF = 64;
    TORCH_CHECK_VALUE(d.F <= kMaxF, "ensemble_readout_loss: at most ", kMaxF, " features, got ", d.F);
    // FF > 0 fixes the feature count at compile time, so the f-loops become vector code.
    auto run = [&](auto FF_tag) {
      constexpr int64_t FF = decltype(FF_tag)::value;
      const int64_t F = FF > 0 ? FF : d.F;
      for_tiles(d, [&](int64_t c, int64_t t, int64_t bb, int64_t i) {
        scalar_t g[kMaxF], o[kMaxF];
        const int64_t r = t * d.B + bb;
        const scalar_t* hr = hs + r * d.I * d.n + i * d.n;
        const scalar_t* wi = w + i * d.n * F;
        const scalar_t* yr = ys + ((i * d.B + bb) * d.T + t) * F;
        scalar_t* ab = pbs + (c * d.I + i) * F;
        for (int64_t f = 0; f < F; ++f) o[f] = bs[i * F + f];
        for (int64_t j = 0; j < d.n; ++j) {
          const scalar_t hj = hr[j];
          for (int64_t f = 0; f < F; ++f) o[f] += hj * wi[j * F + f];
        }
        scalar_t sq = 0;
        for (int64_t f = 0; f < F; ++f) {
          const bool live = !relu || !(o[f] <= 0);  // a NaN output stays NaN (see live_mask)
          const scalar_t e = (live ? o[f] : scalar_t(0)) - yr[f];
          sq += e * e;
          g[f] = live ? scale * e : scalar_t(0);
          ab[f] += g[f];
        }
        pls[c * d.I + i] += static_cast<double>(sq);
        scalar_t* ghr = ghs + r * d.I * d.n + i * d.n;
        scalar_t* aWi = pWs + (c * d.I + i) * d.n * F;
        for (int64_t j = 0; j < d.n; ++j) {
          const scalar_t hj = hr[j];
          scalar_t s = 0;
          for (int64_t f = 0; f < F; ++f) {
            s += g[f] * wi[j * F + f];
            aWi[j * F + f] += hj * g[f];
          }
          ghr[j] = s;
        }
      });
    };
    using Vec = at::vec::Vectorized<scalar_t>;
    if (d.F == Vec::size()) {
      // F fills one SIMD register (8 float32 or 4 float64 with AVX2): the whole readout,
      // error and gradient of one (t, b, i) visit are a handful of vector instructions.
      // The squared errors accumulate per feature lane and are summed once at the end.
      const int64_t V = Vec::size();
      at::Tensor plv = at::zeros({chunks, d.I, V}, Wy.options());
      scalar_t* plvs = plv.mutable_data_ptr<scalar_t>();
      const Vec vscale(scale);
      for_tiles(d, [&](int64_t c, int64_t t, int64_t bb, int64_t i) {
        const int64_t r = t * d.B + bb;
        const scalar_t* hr = hs + r * d.I * d.n + i * d.n;
        const scalar_t* wi = w + i * d.n * V;
        Vec o = Vec::loadu(bs + i * V);
        for (int64_t j = 0; j < d.n; ++j) o = at::vec::fmadd(Vec(hr[j]), Vec::loadu(wi + j * V), o);
        const Vec live = relu ? live_mask(o) : Vec(scalar_t(0));
        const Vec e = (relu ? o & live : o) - Vec::loadu(ys + ((i * d.B + bb) * d.T + t) * V);
        Vec g = e * vscale;
        if (relu) g = g & live;
        scalar_t* ab = pbs + (c * d.I + i) * V;
        (Vec::loadu(ab) + g).store(ab);
        scalar_t* al = plvs + (c * d.I + i) * V;
        at::vec::fmadd(e, e, Vec::loadu(al)).store(al);
        scalar_t* aWi = pWs + (c * d.I + i) * d.n * V;
        scalar_t* ghr = ghs + r * d.I * d.n + i * d.n;
        for (int64_t j = 0; j < d.n; ++j) {
          at::vec::fmadd(Vec(hr[j]), g, Vec::loadu(aWi + j * V)).store(aWi + j * V);
          ghr[j] = at::vec::vec_reduce_all<scalar_t>([](Vec& a, Vec& b) { return a + b; }, g * Vec::loadu(wi + j * V));
        }
      });
      pl.add_(plv.sum(2).to(at::kDouble));
      return;
    }
    switch (d.F) {
      case 2: run(std::integral_constant<int64_t, 2>{}); break;
      case 4: run(std::integral_constant<int64_t, 4>{}); break;
      case 8: run(std::integral_constant<int64_t, 8>{}); break;
      case 16: run(std::integral_constant<int64_t, 16>{}); break;
      default: run(std::integral_constant<int64_t, 0>{});
    }
  });
  at::Tensor loss = at::div(pl.sum(0), static_cast<double>(d.B * d.T * d.F)).to(h.scalar_type());
  return {loss, gh, pW.sum(0), pb.sum(0)};
}

// ---------------------------------------------------------------------------------------
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

// Fully unrolled loops over compile-time hidden sizes / feature counts keep the per-step
// vector arrays in registers (GCC otherwise stores them back to the stack every iteration).
#define UNROLL _Pragma("GCC unroll 16")
#define ALWAYS_INLINE inline __attribute__((always_inline))
// Keeps GCC from unrolling a short outer loop completely, which leaves the loop inside it scalar.
#define NO_UNROLL _Pragma("GCC unroll 1")

// Largest hidden size / feature count of the fused ensemble_loss (its per-step vectors live
// in fixed-size local arrays); larger ensembles go through modular_rnn instead.
constexpr int64_t kMaxEnsembleDim = 64;

// Batch tiles that go through the recurrence together (see fused_steps).
constexpr int64_t kTilesPerGroup = 2;

// C[r, c] += sum over steps t of a(A[t, r]) * b(B[t, c]) for rows r < RB and columns c < CB of
// a register block, lane by lane (a = relu when RELU_A, b likewise): A [steps, ., L] with step
// stride a_step, B likewise, element (r, c) of C at C + (r * c_row + c * c_col) * L. Kept out
// of line: inlined into ensemble_loss_chunk, it made GCC compile the recurrences around it
// worse (rdtsc profile, hidden 10: forward 42 -> 48, backward 39 -> 48 Mcycles per call).
template <typename scalar_t, int64_t RB, int64_t CB, bool RELU_A, bool RELU_B>
__attribute__((noinline)) void outer_block(const scalar_t* A, int64_t a_step, const scalar_t* Bm, int64_t b_step,
                                           int64_t steps, scalar_t* C, int64_t c_row, int64_t c_col) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  const Vec zero(scalar_t(0));
  Vec acc[RB][CB];
  UNROLL for (int64_t r = 0; r < RB; ++r) UNROLL for (int64_t c = 0; c < CB; ++c) acc[r][c] = zero;
  for (int64_t t = 0; t < steps; ++t) {
    Vec bv[CB];
    UNROLL for (int64_t c = 0; c < CB; ++c) {
      bv[c] = Vec::loadu(Bm + t * b_step + c * L);
      if constexpr (RELU_B) bv[c] = relu_vec(bv[c]);
    }
    UNROLL for (int64_t r = 0; r < RB; ++r) {
      Vec a = Vec::loadu(A + t * a_step + r * L);
      if constexpr (RELU_A) a = relu_vec(a);
      UNROLL for (int64_t c = 0; c < CB; ++c) acc[r][c] = at::vec::fmadd(a, bv[c], acc[r][c]);
    }
  }
  UNROLL for (int64_t r = 0; r < RB; ++r) UNROLL for (int64_t c = 0; c < CB; ++c) {
    scalar_t* dst = C + (r * c_row + c * c_col) * L;
    (Vec::loadu(dst) + acc[r][c]).store(dst);
  }
}

// The whole na x nb product of outer_block, b = relu when RELU_B: the weight gradients of one
// tile as small GEMMs whose accumulators stay in registers (the lanes are summed once per
// chunk, not per tile). On this machine's core the block shape decides the rate more than
// the load count does (G vector FMA/s, data in L1, bench/outer_blocks.cpp; the peak is 7.3):
// 4 x 3 7.05, 3 x 4 6.41, 1 x 10 6.60, 1 x 8 5.32, 2 x 5 5.15, 2 x 4 4.88, 8 x 1 3.86, 4 x 2
// 3.70. So: 4 x 3 blocks where they fit; a column or two left over as rows of blocks 1 x 8 /
// 2 x 4 over the transposed product; the last na mod 4 rows one at a time, in blocks of up to
// 10 columns.
template <typename scalar_t, bool RELU_B>
void outer_tiled(const scalar_t* A, int64_t a_step, int64_t na, const scalar_t* Bm, int64_t b_step, int64_t nb,
                 int64_t steps, scalar_t* C, int64_t c_row, int64_t c_col) {
  constexpr int64_t L = at::vec::Vectorized<scalar_t>::size();
  const int64_t R4 = na / 4 * 4, C3 = nb / 3 * 3, CR = nb - C3;
  for (int64_t r0 = 0; r0 < R4; r0 += 4)
    for (int64_t c0 = 0; c0 < C3; c0 += 3)
      outer_block<scalar_t, 4, 3, false, RELU_B>(A + r0 * L, a_step, Bm + c0 * L, b_step, steps,
                                                 C + (r0 * c_row + c0 * c_col) * L, c_row, c_col);
  // Columns C3.. against rows 0..R4: the transposed product, CR rows x 8 or 4 columns.
  for (int64_t r0 = 0; CR > 0 && r0 < R4;) {
    const scalar_t* a = Bm + C3 * L;
    scalar_t* c = C + (r0 * c_row + C3 * c_col) * L;
    if (CR == 2) {
      outer_block<scalar_t, 2, 4, RELU_B, false>(a, b_step, A + r0 * L, a_step, steps, c, c_col, c_row);
      r0 += 4;
    } else if (R4 % 8 == 0) {
      outer_block<scalar_t, 1, 8, RELU_B, false>(a, b_step, A + r0 * L, a_step, steps, c, c_col, c_row);
      r0 += 8;
    } else {
      outer_block<scalar_t, 1, 4, RELU_B, false>(a, b_step, A + r0 * L, a_step, steps, c, c_col, c_row);
      r0 += 4;
    }
  }
  // Rows R4..: 1 x 10 blocks, then one block of the columns left (a compile-time width each).
  auto row = [&](auto CB_tag, int64_t r, int64_t c0) {
    constexpr int64_t CB = decltype(CB_tag)::value;
    outer_block<scalar_t, 1, CB, false, RELU_B>(A + r * L, a_step, Bm + c0 * L, b_step, steps,
                                                C + (r * c_row + c0 * c_col) * L, c_row, c_col);
  };
  using std::integral_constant;
  for (int64_t r = R4; r < na; ++r) {
    int64_t c0 = 0;
    for (; c0 + 10 <= nb; c0 += 10) row(integral_constant<int64_t, 10>{}, r, c0);
    switch (nb - c0) {
      case 1: row(integral_constant<int64_t, 1>{}, r, c0); break;
      case 2: row(integral_constant<int64_t, 2>{}, r, c0); break;
      case 3: row(integral_constant<int64_t, 3>{}, r, c0); break;
      case 4: row(integral_constant<int64_t, 4>{}, r, c0); break;
      case 5: row(integral_constant<int64_t, 5>{}, r, c0); break;
      case 6: row(integral_constant<int64_t, 6>{}, r, c0); break;
      case 7: row(integral_constant<int64_t, 7>{}, r, c0); break;
      case 8: row(integral_constant<int64_t, 8>{}, r, c0); break;
      case 9: row(integral_constant<int64_t, 9>{}, r, c0); break;
      default: break;
    }
  }
}

// Software prefetch of the x and y rows of later tiles (one contiguous block each, possibly the
// first tiles of the piece of work that the thread runs next), spread in small bites over the
// passes of the current group of tiles: the hardware prefetcher alone leaves each group's first
// reads waiting on memory, and issuing a whole block at once stalls on the miss buffers. Two
// streams: the group after next into L2 (prefetcht2: it does not hold the L1 miss buffers that the passes' own L2 reads
// need while memory answers) and the next group from L2 into L1 (prefetcht0). A block starts
// `offset` elements after xs / ys (none where xs / ys is null) and is clipped to x_end / y_end
// (one past the data).
template <typename scalar_t, int LOCALITY>
struct BlockPrefetch {
  const char* x = nullptr;
  const char* y = nullptr;
  int64_t x_lines = 0, lines = 0, per_call = 0, next = 0;
  BlockPrefetch(const scalar_t* xs, const scalar_t* x_end, const scalar_t* ys, const scalar_t* y_end, int64_t offset,
                int64_t elems, int64_t calls) {
    const int64_t ex = xs ? std::max<int64_t>(0, std::min<int64_t>(elems, (x_end - xs) - offset)) : 0;
    const int64_t ey = ys ? std::max<int64_t>(0, std::min<int64_t>(elems, (y_end - ys) - offset)) : 0;
    if (ex > 0) x = reinterpret_cast<const char*>(xs + offset);
    if (ey > 0) y = reinterpret_cast<const char*>(ys + offset);
    constexpr int64_t per_line = 64 / static_cast<int64_t>(sizeof(scalar_t));
    x_lines = (ex + per_line - 1) / per_line;
    lines = x_lines + (ey + per_line - 1) / per_line;
    per_call = (lines + calls - 1) / calls;
  }
  void step() {
    for (const int64_t end = std::min(next + per_call, lines); next < end; ++next)
      __builtin_prefetch(next < x_lines ? x + next * 64 : y + (next - x_lines) * 64, 0, LOCALITY);
  }
};

template <typename scalar_t>
struct TilePrefetch {
  BlockPrefetch<scalar_t, 1> far;
  BlockPrefetch<scalar_t, 3> near;
  bool far_phase;
  // Prefetch of the next group of `group` tiles (near_x / near_y: its first rows, L per tile)
  // and of the one after (far_x / far_y); null where there is none. With
  // two_level, the far stream runs in the fwd_calls calls of the forward steps and the near
  // one in the bwd_calls calls of the backward steps, when the far data has had time to reach
  // L2 (without a backward pass both run during the forward steps). Without it, only the near
  // stream runs, straight from memory, over all calls: with much work per tile (hidden sizes
  // from kTwoLevelBelow on) it has the time, and the extra stream costs more than it saves.
  TilePrefetch(const scalar_t* near_x, const scalar_t* near_y, const scalar_t* far_x, const scalar_t* far_y,
               const scalar_t* x_end, const scalar_t* y_end, int64_t group, int64_t tile_elems, int64_t fwd_calls,
               int64_t bwd_calls, bool two_level)
      : far(far_x, x_end, far_y, y_end, 0, two_level ? group * tile_elems : 0, fwd_calls),
        near(near_x, x_end, near_y, y_end, 0, group * tile_elems,
             two_level ? (bwd_calls > 0 ? bwd_calls : fwd_calls) : fwd_calls + bwd_calls),
        far_phase(two_level && bwd_calls > 0) {}
  // From here on the calls belong to the near stream.
  void start_near() { far_phase = false; }
  void step() {
    far.step();  // no-op once the far stream is done
    if (!far_phase) near.step();
  }
};

// Hidden sizes below this use both prefetch streams (see TilePrefetch). Measured with
// bench/ensemble_op_threads.py, one thread: hidden 2 38 -> 29-32 ms, hidden 5 46 -> 40-43 ms
// with both; hidden 10 72 -> 75 ms, so it keeps the single stream.
constexpr int64_t kTwoLevelBelow = 8;

// out[t, j] = sum_f W[j, f] in[t, f] for t in [t0, t1) (lane-major [T, nin, L] in, [T, n, L]
// out, each weight broadcast from its scalar): a register block of TB steps x CB outputs,
// so that one weight load feeds TB FMAs and each input load CB of them; the last T mod TB
// steps one at a time. Calls pf.step() once per step.
template <typename scalar_t, int64_t CB, int64_t TB>
void lane_matvec(const scalar_t* W, const scalar_t* in, scalar_t* out, int64_t n, int64_t nin, int64_t t0,
                 int64_t t1, TilePrefetch<scalar_t>& pf) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  int64_t t = t0;
  for (; t + TB <= t1; t += TB) {
    UNROLL for (int64_t u = 0; u < TB; ++u) pf.step();
    for (int64_t j0 = 0; j0 < n; j0 += CB) {
      const int64_t nb = std::min<int64_t>(CB, n - j0);
      Vec p[TB][CB];
      UNROLL for (int64_t u = 0; u < TB; ++u) UNROLL for (int64_t j = 0; j < nb; ++j) p[u][j] = Vec(scalar_t(0));
      UNROLL for (int64_t f = 0; f < nin; ++f) {
        Vec v[TB];
        UNROLL for (int64_t u = 0; u < TB; ++u) v[u] = Vec::loadu(in + ((t + u) * nin + f) * L);
        UNROLL for (int64_t j = 0; j < nb; ++j) {
          const Vec w(W[(j0 + j) * nin + f]);
          UNROLL for (int64_t u = 0; u < TB; ++u) p[u][j] = at::vec::fmadd(w, v[u], p[u][j]);
        }
      }
      UNROLL for (int64_t u = 0; u < TB; ++u)
        UNROLL for (int64_t j = 0; j < nb; ++j) p[u][j].store(out + ((t + u) * n + j0 + j) * L);
    }
  }
  if constexpr (TB > 1) lane_matvec<scalar_t, CB, 1>(W, in, out, n, nin, t, t1, pf);
}

// Register block of lane_matvec for a compile-time hidden size nn (0: given at run time):
// steps per block (enough independent accumulators for small n) and outputs per block.
constexpr int64_t matvec_steps(int64_t nn) { return nn <= 0 ? 1 : nn <= 2 ? 4 : 2; }
constexpr int64_t matvec_outputs(int64_t nn) { return nn <= 0 ? 8 : nn <= 5 ? nn : 5; }

// Readout, error and unscaled readout gradient of R consecutive steps t.. of a tile, FB
// features per register block: o = b + W_y^T h_t, e = r(o) - y_t, go_t = r'(o) e, and the
// squared errors summed into lossv. The gradients' constant factor 2 / (B T F) is applied
// once when the tile sums are flushed (all of them are linear in go). W0: column 0 of W_y is zero
// below its first entry (the Hessenberg basis), and those FMAs are skipped.
template <typename scalar_t, int64_t R, int64_t FB, bool W0 = false>
inline void readout_steps(const scalar_t* wy, const scalar_t* bias, const scalar_t* hs, const scalar_t* yt,
                          scalar_t* go, int64_t n, int64_t F, int64_t t, bool relu_out,
                          at::vec::Vectorized<scalar_t> (&lossv)[2]) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  UNROLL for (int64_t f0 = 0; f0 < F; f0 += FB) {
    const int64_t nb = std::min<int64_t>(FB, F - f0);
    Vec o[R][FB];
    UNROLL for (int64_t f = 0; f < nb; ++f) {
      const Vec bf(bias[f0 + f]);
      UNROLL for (int64_t u = 0; u < R; ++u) o[u][f] = bf;
    }
    UNROLL for (int64_t j = 0; j < n; ++j) {
      Vec h[R];
      UNROLL for (int64_t u = 0; u < R; ++u) h[u] = Vec::loadu(hs + ((t + u) * n + j) * L);
      UNROLL for (int64_t f = 0; f < nb; ++f) {
        if (W0 && f0 + f == 0 && j > 0) continue;  // a structural zero
        const Vec w(wy[j * F + f0 + f]);
        UNROLL for (int64_t u = 0; u < R; ++u) o[u][f] = at::vec::fmadd(w, h[u], o[u][f]);
      }
    }
    UNROLL for (int64_t u = 0; u < R; ++u) UNROLL for (int64_t f = 0; f < nb; ++f) {
      const int64_t q = ((t + u) * F + f0 + f) * L;
      if (relu_out) {
        const Vec live = live_mask(o[u][f]);
        const Vec e = (o[u][f] & live) - Vec::loadu(yt + q);
        lossv[f & 1] = at::vec::fmadd(e, e, lossv[f & 1]);
        (e & live).store(go + q);
      } else {
        const Vec e = o[u][f] - Vec::loadu(yt + q);
        lossv[f & 1] = at::vec::fmadd(e, e, lossv[f & 1]);
        e.store(go + q);
      }
    }
  }
}

// One pass of the recurrence over a tile's T steps, for G tiles at once:
//   forward  (BACKWARD false): out_t = A in_t + R s(out_{t-1}), t = 0 .. T-1, R[j, k] = r[j*n + k]
//   backward (BACKWARD true):  out_t = A in_t + R out_{t+1},    t = T-1 .. 0, R[j, k] = r[k*n + j]
// with A[j, f] = a[j*nin + f], s = relu when relu_prev, lane-major [T, nin, L] in and [T, n, L]
// out. Each output unit is one chain per step, the input terms first: they do not wait for
// the previous step, so the core can work on them while the previous step's chain is still
// in flight. Outputs go in blocks of JB (JB <= 5, or JB == n), the n mod JB left over in one
// block of its own width; the G tiles share every weight load and give the core G independent
// chains. With HN > 0 the recurrent matrix is upper Hessenberg of compile-time size HN (forward:
// R[j, k] = 0 for k < j - 1; backward, its transpose: R[j, k] = 0 for k > j + 1) and the
// structural zeros are skipped: 64 instead of 100 FMAs per unit block pair at n = 10. Calls
// pf.step() once per step.
template <typename scalar_t, int64_t G, int64_t JB, bool BACKWARD, int64_t HN = 0>
ALWAYS_INLINE void fused_steps(const scalar_t* a, const scalar_t* r, scalar_t* const* in_tiles,
                               scalar_t* const* out_tiles, int64_t n, int64_t nin, int64_t T, bool relu_prev,
                               TilePrefetch<scalar_t>& pf) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t L = Vec::size();
  const Vec zero(scalar_t(0));
  // Local copies of the buffer pointers: vector stores may alias anything, so pointers read
  // through in_tiles / out_tiles would be reloaded after every store.
  const scalar_t* in[G];
  scalar_t* out[G];
  for (int64_t g = 0; g < G; ++g) {
    in[g] = in_tiles[g];
    out[g] = out_tiles[g];
  }
  // Units j0 .. j0 + NB of step t, NB a compile-time width (the accumulators stay in registers).
  // j0_tag: the first unit, an int64_t or (with HN > 0) a compile-time integral_constant.
  auto block = [&](auto NB_tag, int64_t s, int64_t t, int64_t tp, auto j0_tag) __attribute__((always_inline)) {
    constexpr int64_t NB = decltype(NB_tag)::value;
    const int64_t j0 = j0_tag;
    Vec p[G][NB];
    UNROLL for (int64_t g = 0; g < G; ++g) UNROLL for (int64_t j = 0; j < NB; ++j) p[g][j] = zero;
    UNROLL for (int64_t f = 0; f < nin; ++f) {
      Vec v[G];
      UNROLL for (int64_t g = 0; g < G; ++g) v[g] = Vec::loadu(in[g] + (t * nin + f) * L);
      UNROLL for (int64_t j = 0; j < NB; ++j) {
        if constexpr (HN > 0 && BACKWARD) {  // a = W_y in the Hessenberg basis: column 0 is c e_0
          constexpr int64_t J0 = decltype(j0_tag)::value;
          if (f == 0 && J0 + j > 0) continue;
        }
        const Vec w(a[(j0 + j) * nin + f]);
        UNROLL for (int64_t g = 0; g < G; ++g) p[g][j] = at::vec::fmadd(w, v[g], p[g][j]);
      }
    }
    if (s > 0) {
      UNROLL for (int64_t k = 0; k < n; ++k) {
        Vec v[G];
        UNROLL for (int64_t g = 0; g < G; ++g) {
          v[g] = Vec::loadu(out[g] + (tp * n + k) * L);
          if (relu_prev) v[g] = relu_vec(v[g]);
        }
        UNROLL for (int64_t j = 0; j < NB; ++j) {
          if constexpr (HN > 0) {
            constexpr int64_t J0 = decltype(j0_tag)::value;
            if (BACKWARD ? k > J0 + j + 1 : k + 1 < J0 + j) continue;  // a structural zero
          }
          const Vec w(BACKWARD ? r[k * n + j0 + j] : r[(j0 + j) * n + k]);
          UNROLL for (int64_t g = 0; g < G; ++g) p[g][j] = at::vec::fmadd(w, v[g], p[g][j]);
        }
      }
    }
    UNROLL for (int64_t g = 0; g < G; ++g)
      UNROLL for (int64_t j = 0; j < NB; ++j) p[g][j].store(out[g] + (t * n + j0 + j) * L);
  };
  using std::integral_constant;
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = BACKWARD ? T - 1 - s : s, tp = BACKWARD ? t + 1 : t - 1;
    pf.step();
    if constexpr (HN > 0) {
      // Compile-time unit blocks, so that the structural zeros are known to the compiler.
      static_assert(HN % JB == 0 && HN <= 2 * JB, "Hessenberg unit blocks: one or two, tiling the hidden size");
      block(integral_constant<int64_t, JB>{}, s, t, tp, integral_constant<int64_t, 0>{});
      if constexpr (HN > JB) block(integral_constant<int64_t, JB>{}, s, t, tp, integral_constant<int64_t, JB>{});
    } else {
      int64_t j0 = 0;
      for (; j0 + JB <= n; j0 += JB) block(integral_constant<int64_t, JB>{}, s, t, tp, j0);
      if constexpr (JB <= 5) switch (n - j0) {  // wider blocks are only used when JB == n
        case 1: block(integral_constant<int64_t, 1>{}, s, t, tp, j0); break;
        case 2: block(integral_constant<int64_t, 2>{}, s, t, tp, j0); break;
        case 3: block(integral_constant<int64_t, 3>{}, s, t, tp, j0); break;
        case 4: block(integral_constant<int64_t, 4>{}, s, t, tp, j0); break;
        default: break;
      }
    }
  }
}

// W = Q H Q^T with Q orthogonal, its first column parallel to q1 (when q1 != 0), and H upper
// Hessenberg (H[j, k] = 0 for k < j - 1, set exactly): a reflection that maps e_0 onto q1, then
// N - 2 Householder reflections that keep e_0 (Golub and Van Loan, Matrix Computations,
// algorithm 7.4.2), in float64. W, H, Q: N x N row-major; q1: N. Compile-time sizes and loops
// that GCC vectorizes: with HessenbergBasis about 7100-8100 TSC cycles per instance at N = 10
// (bench/ensemble_parts.sh setup), about 8650 with run-time sizes.
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
  // The vector buffers start on a cache line (unaligned vector loads that straddle two lines
  // cost about 13% at hidden 5); buf has room for the shift.
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
    for (int64_t g = 0; g < G; ++g) {
      Vec lossv[2] = {zero, zero};  // two accumulators: the squared errors are not one chain
      int64_t t = 0;
      for (; t + 2 <= T; t += 2)
        readout_steps<scalar_t, 2, RB, HESS>(wyb, bias, hs[g], yt[g], go[g], n, F, t, relu_out, lossv);
      if (t < T) readout_steps<scalar_t, 1, RB, HESS>(wyb, bias, hs[g], yt[g], go[g], n, F, t, relu_out, lossv);
      (Vec::loadu(acc) + (lossv[0] + lossv[1])).store(acc);
    }
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
    // Weight gradients: sums over steps and lanes of outer products.
    for (int64_t g = 0; g < G; ++g) {
      // W_x: [n, F] += gp_t x_t^T, W_h: [n, n] += gp_t s(h_{t-1})^T, W_y: [n, F] += h_t go_t^T, in
      // this order: gp, just written by the backward pass, first (rdtsc profile, hidden 10: weight
      // gradients 58.3-59.3 -> 55.9-56.4 Mcycles per call against W_y first).
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
  const EnsDims d = check_x_w(op, y_in, Wy_in, "y", "W_y");
  check_cpu_float(op, {{"x", &x_in}, {"W_x", &Wx_in}, {"W_h", &Wh_in}, {"W_y", &Wy_in}, {"b", &b_in}, {"y", &y_in}});
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
  const auto fopts = Wy.options().dtype(at::kDouble);
  at::Tensor loss = at::zeros({d.I}, fopts);
  const int64_t gsz = need_grad ? d.I : 0;
  at::Tensor gWx = at::zeros({gsz, d.n, d.F}, fopts), gWh = at::zeros({gsz, d.n, d.n}, fopts),
             gWy = at::zeros({gsz, d.n, d.F}, fopts), gb = at::zeros({gsz, d.F}, fopts);
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
    double* ls = loss.mutable_data_ptr<double>();
    double* g[4] = {need_grad ? gWx.mutable_data_ptr<double>() : nullptr,
                    need_grad ? gWh.mutable_data_ptr<double>() : nullptr,
                    need_grad ? gWy.mutable_data_ptr<double>() : nullptr,
                    need_grad ? gb.mutable_data_ptr<double>() : nullptr};
    const int64_t sizes[4] = {d.n * d.F, d.n * d.n, d.n * d.F, d.F};
    for (int64_t i = 0; i < d.I; ++i)
      for (int64_t c = 0; c < chunks; ++c) {
        const double* part = partial.data() + (i * chunks + c) * per;
        ls[i] += part[0];
        if (!need_grad) continue;
        int64_t off = 1;
        for (int q = 0; q < 4; ++q) {
          for (int64_t e = 0; e < sizes[q]; ++e) g[q][i * sizes[q] + e] += part[off + e];
          off += sizes[q];
        }
      }
  });
  const auto dt = y.scalar_type();
  const double count = static_cast<double>(d.B * d.T * d.F);
  return {at::div(loss, count).to(dt), gWx.to(dt), gWh.to(dt), gWy.to(dt), gb.to(dt)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnofrnns, m) {
  m.def("ensemble_drive_fwd(Tensor x, Tensor W_x) -> Tensor drive");
  m.def(
      "ensemble_drive_bwd(Tensor grad_drive, Tensor x, Tensor W_x, bool need_x_grad, bool need_W_grad) "
      "-> (Tensor grad_x, Tensor grad_W_x)");
  m.def(
      "ensemble_readout_loss(Tensor h, Tensor W_y, Tensor b, Tensor y, bool relu) "
      "-> (Tensor loss, Tensor grad_h, Tensor grad_W_y, Tensor grad_b)");
  m.def(
      "ensemble_loss(Tensor x, Tensor W_x, Tensor W_h, Tensor W_y, Tensor b, Tensor y, bool relu_hidden, "
      "bool relu_out, bool need_grad) -> (Tensor loss, Tensor grad_W_x, Tensor grad_W_h, Tensor grad_W_y, "
      "Tensor grad_b)");
}

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("ensemble_drive_fwd", &ensemble_drive_fwd);
  m.impl("ensemble_drive_bwd", &ensemble_drive_bwd);
  m.impl("ensemble_readout_loss", &ensemble_readout_loss);
  m.impl("ensemble_loss", &ensemble_loss);
}

}  // namespace rnnofrnns
