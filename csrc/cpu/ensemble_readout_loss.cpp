// ensemble_readout_loss: the readout, relu and squared error of every instance of an ensemble
// of I small RNNs, with their gradients, in one pass over the targets:
//
//   out[i, b, t, f] = sigma(b[i, f] + sum_j h[t, b, i*n + j] W_y[i, j, f])
//   loss[i]         = mean_{b,t,f} (out - y)^2
//
// The [I, B, T, F] output is never formed: the op returns the per-instance losses together with
// their gradients with respect to h, W_y and b (the loss ends the graph, so its backward only
// rescales them by the incoming per-instance gradient). The walk is that of ensemble_drive
// (ensemble/common.h); the weight gradients are reduced over a fixed number of row chunks.

#include "ensemble/lanes.h"  // first: fixes the vector width of this unit

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/div.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "ensemble/common.h"
#include "ensemble/simd.h"
#include "output.h"

namespace rnnofrnns {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ensemble_readout_loss(
    const at::Tensor& h_in, const at::Tensor& Wy_in, const at::Tensor& b_in, const at::Tensor& y_in, bool relu) {
  const EnsDims d = check_ensemble_x_w("ensemble_readout_loss", y_in, Wy_in, "y", "W_y");
  check_float_tensors("ensemble_readout_loss", {{"h", &h_in}, {"W_y", &Wy_in}, {"b", &b_in}, {"y", &y_in}});
  TORCH_CHECK_VALUE(h_in.dim() == 3 && h_in.size(0) == d.T && h_in.size(1) == d.B && h_in.size(2) == d.I * d.n,
                    "ensemble_readout_loss: h must be [T, B, I*n] = [", d.T, ", ", d.B, ", ", d.I * d.n,
                    "] for y of shape ", y_in.sizes(), " and W_y of shape ", Wy_in.sizes(), ", got ", h_in.sizes());
  TORCH_CHECK_VALUE(b_in.dim() == 2 && b_in.size(0) == d.I && b_in.size(1) == d.F,
                    "ensemble_readout_loss: b must be [I, F] = [", d.I, ", ", d.F, "], got shape ", b_in.sizes());
  const at::Tensor h = h_in.contiguous(), Wy = Wy_in.contiguous(), bias = b_in.contiguous(), y = y_in.contiguous();
  const int64_t chunks = num_chunks(d);
  at::Tensor gh = new_output(h.sizes(), h.options());
  EnsDims written = d;
  written.T = rows_to_write("ensemble_readout_loss", d.T);  // steps of grad_h: all, except in the test of the NaN fill
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
      for_tiles(written, [&](int64_t c, int64_t t, int64_t bb, int64_t i) {
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
      for_tiles(written, [&](int64_t c, int64_t t, int64_t bb, int64_t i) {
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
          ghr[j] = at::vec::vec_reduce_all<scalar_t>([](const Vec& a, const Vec& b) { return a + b; }, g * Vec::loadu(wi + j * V));
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
  at::Tensor loss = new_output({d.I}, h.options()), gW = new_output(Wy.sizes(), Wy.options()),
             gb = new_output(bias.sizes(), bias.options());
  loss.copy_(at::div(pl.sum(0), static_cast<double>(d.B * d.T * d.F)));
  at::sum_out(gW, pW, 0);
  at::sum_out(gb, pb, 0);
  return {loss, gh, gW, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("ensemble_readout_loss", &ensemble_readout_loss);
}

}  // namespace rnnofrnns
