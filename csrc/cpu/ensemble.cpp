// Fused input projection and readout+loss of an ensemble of I small RNNs (one area each).
//
//   drive[t, b, i*n + j] = sum_f W_x[i, j, f] x[i, b, t, f]                       (ensemble_drive)
//   out[i, b, t, f]      = sigma(b[i, f] + sum_j h[t, b, i*n + j] W_y[i, j, f])   (ensemble_readout_loss)
//   loss[i]              = mean_{b,t,f} (out - y)^2
//
// Both walk tiles of (one batch row b, up to kInstTile instances, all T steps): per
// step the tile's slice of the [T, B, I*n] state is contiguous and every instance's
// x / y rows are read as contiguous [T, F] streams, which keeps TLB and cache misses
// rare (walking instances inside one (t, b) row instead jumps 512 KB per instance). The readout+loss op never forms the [I, B, T, F] output: it
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
#include <cstdint>
#include <tuple>
#include <type_traits>

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
          const bool live = !relu || o[f] > 0;
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
      const Vec zero(scalar_t(0)), vscale(scale);
      for_tiles(d, [&](int64_t c, int64_t t, int64_t bb, int64_t i) {
        const int64_t r = t * d.B + bb;
        const scalar_t* hr = hs + r * d.I * d.n + i * d.n;
        const scalar_t* wi = w + i * d.n * V;
        Vec o = Vec::loadu(bs + i * V);
        for (int64_t j = 0; j < d.n; ++j) o = at::vec::fmadd(Vec(hr[j]), Vec::loadu(wi + j * V), o);
        const Vec out = relu ? at::vec::maximum(o, zero) : o;
        const Vec e = out - Vec::loadu(ys + ((i * d.B + bb) * d.T + t) * V);
        Vec g = e * vscale;
        if (relu) g = Vec::blendv(zero, g, o > zero);
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnofrnns, m) {
  m.def("ensemble_drive_fwd(Tensor x, Tensor W_x) -> Tensor drive");
  m.def(
      "ensemble_drive_bwd(Tensor grad_drive, Tensor x, Tensor W_x, bool need_x_grad, bool need_W_grad) "
      "-> (Tensor grad_x, Tensor grad_W_x)");
  m.def(
      "ensemble_readout_loss(Tensor h, Tensor W_y, Tensor b, Tensor y, bool relu) "
      "-> (Tensor loss, Tensor grad_h, Tensor grad_W_y, Tensor grad_b)");
}

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("ensemble_drive_fwd", &ensemble_drive_fwd);
  m.impl("ensemble_drive_bwd", &ensemble_drive_bwd);
  m.impl("ensemble_readout_loss", &ensemble_readout_loss);
}

}  // namespace rnnofrnns
