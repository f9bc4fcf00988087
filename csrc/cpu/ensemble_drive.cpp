// ensemble_drive: the input projection of every instance of an ensemble of I small RNNs (one
// area each of a modular_rnn call), written straight into the [T, B, I*n] drive:
//
//   drive[t, b, i*n + j] = sum_f W_x[i, j, f] x[i, b, t, f]
//
// The walk (ensemble/common.h) takes tiles of (one batch row, up to kInstTile instances, all
// steps): per step the tile's slice of the drive is contiguous and every instance's x rows are
// contiguous [T, F] streams, which keeps TLB and cache misses rare (walking the instances inside
// one (t, b) row instead jumps a whole [B, T, F] block per instance). The backward gives the
// gradients of x and W_x, the latter reduced over a fixed number of row chunks.

#include "ensemble/lanes.h"  // first: fixes the vector width of this unit

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "checks.h"
#include "ensemble/common.h"
#include "output.h"

namespace rnnofrnns {
namespace {

at::Tensor ensemble_drive_fwd(const at::Tensor& x_in, const at::Tensor& W_in) {
  const EnsDims d = check_ensemble_x_w("ensemble_drive_fwd", x_in, W_in, "x", "W_x");
  check_float_tensors("ensemble_drive_fwd", {{"x", &x_in}, {"W_x", &W_in}});
  const at::Tensor x = x_in.contiguous(), W = W_in.contiguous();
  at::Tensor drive = new_output({d.T, d.B, d.I * d.n}, x.options());
  EnsDims written = d;
  written.T = rows_to_write("ensemble_drive_fwd", d.T);  // all steps, except in the test of the NaN fill
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ensemble_drive_fwd", [&] {
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* w = W.const_data_ptr<scalar_t>();
    scalar_t* out = drive.mutable_data_ptr<scalar_t>();
    using Vec = at::vec::Vectorized<scalar_t>;
    if (d.F == Vec::size()) {  // one SIMD register per x row
      for_tiles(written, [&](int64_t, int64_t t, int64_t b, int64_t i) {
        scalar_t* o = out + (t * d.B + b) * d.I * d.n + i * d.n;
        const Vec xv = Vec::loadu(xs + ((i * d.B + b) * d.T + t) * d.F);
        const scalar_t* wi = w + i * d.n * d.F;
        for (int64_t j = 0; j < d.n; ++j)
          o[j] = at::vec::vec_reduce_all<scalar_t>([](const Vec& a, const Vec& c) { return a + c; },
                                                   Vec::loadu(wi + j * d.F) * xv);
      });
      return;
    }
    for_tiles(written, [&](int64_t, int64_t t, int64_t b, int64_t i) {
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
  const EnsDims d = check_ensemble_x_w("ensemble_drive_bwd", x_in, W_in, "x", "W_x");
  check_float_tensors("ensemble_drive_bwd", {{"x", &x_in}, {"W_x", &W_in}, {"grad_drive", &gd_in}});
  TORCH_CHECK_VALUE(gd_in.dim() == 3 && gd_in.size(0) == d.T && gd_in.size(1) == d.B && gd_in.size(2) == d.I * d.n,
                    "ensemble_drive_bwd: grad_drive must be [T, B, I*n] = [", d.T, ", ", d.B, ", ", d.I * d.n,
                    "], got shape ", gd_in.sizes());
  const at::Tensor gd = gd_in.contiguous(), x = x_in.contiguous(), W = W_in.contiguous();
  at::Tensor gx = new_output(need_x ? x.sizes() : at::IntArrayRef({0}), x.options());  // not requested: empty
  at::Tensor gW = need_W ? new_output(W.sizes(), W.options()) : new_zero_output(W.sizes(), W.options());
  EnsDims written = d;
  written.T = rows_to_write("ensemble_drive_bwd", d.T);  // all steps, except in the test of the NaN fill
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
      for_tiles(written, [&](int64_t c, int64_t t, int64_t b, int64_t i) {
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
    for_tiles(written, [&](int64_t c, int64_t t, int64_t b, int64_t i) {
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
  if (need_W) at::sum_out(gW, partial, 0);
  return {gx, gW};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("ensemble_drive_fwd", &ensemble_drive_fwd);
  m.impl("ensemble_drive_bwd", &ensemble_drive_bwd);
}

}  // namespace rnnofrnns
