// CPU kernels for the gated multi-path matmul  y = sum_p c_p * (W_p x).
//
//   x [B, D_in], W [P, D_out, D_in], c of shape [P] ("path"), [B, P] ("sample") or
//   [B, P, D_out] ("neuron").
//
// The gates never produce a [B, P, D_out] intermediate for path and sample gates:
//   path   : W_eff = sum_p c_p W_p (one pass over W), y = x W_eff^T: one GEMM of
//            D_in, not P * D_in, in the reduction.
//   sample : the gates fold into the reduction dimension: X~[b, p*D_in + i] = c[b,p] x[b,i]
//            and y = X~ Wcat^T with Wcat[o, p*D_in + i] = W[p, o, i]: one GEMM over P*D_in.
//   neuron : Z = x W_stack^T ([B, P*D_out], one GEMM), y[b,o] = sum_p c[b,p,o] Z[b,p,o].
// The forward returns y and `aux` for the backward: W_eff, Wcat or Z respectively.
//
// Backward (dy [B, D_out]):
//   path   : G = dy^T x; dW_p = c_p G; dc_p = <W_p, G>; dx = dy W_eff.
//   sample : dX~ = dy Wcat (one GEMM); dx[b,i] = sum_p c[b,p] dX~[b,p,i] and
//            dc[b,p] = sum_i x[b,i] dX~[b,p,i] in one pass over dX~ (no second pass over W);
//            dW = (c (x) dy)^T x as one GEMM into the contiguous [P*D_out, D_in] view of dW.
//   neuron : dZ = c * dy; dc = dy * Z; dx = dZ W_stack; dW_stack = dZ^T x.
// The products are fixed_gemm.h's, summed in an order that does not depend on the thread
// count (a BLAS's may: MKL's does on AMD CPUs); the gate folding, the reductions and the
// argument checks are here.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "checks.h"
#include "fixed_gemm.h"
#include "output.h"

namespace rnnofrnns {
namespace {

// out = a @ b in the fixed order of fixed_gemm.h, any strides of a [M, K] and b [K, N]; out
// (a view of an output: narrowed or reshaped) has unit column stride.
void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
  TORCH_INTERNAL_ASSERT(out.dim() == 2 && a.dim() == 2 && b.dim() == 2 && out.size(0) == a.size(0) &&
                        out.size(1) == b.size(1) && a.size(1) == b.size(0) && (out.size(1) <= 1 || out.stride(1) == 1));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "gated_paths_mm", [&] {
    const PackedB<scalar_t> packed =
        pack_b<scalar_t>(b.const_data_ptr<scalar_t>(), b.stride(0), b.stride(1), b.size(0), b.size(1));
    fixed_order_mm<scalar_t>(out.mutable_data_ptr<scalar_t>(), out.stride(0), a.const_data_ptr<scalar_t>(),
                             a.stride(0), a.stride(1), packed, a.size(0), b.size(1), a.size(1));
  });
}

// W_eff = sum_p c_p W_p (out [O*I], W [P, O*I] contiguous).
void weighted_sum_into(at::Tensor out, const at::Tensor& W, const at::Tensor& c) {
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "gated_paths_weighted_sum", [&] {
    fixed_order_weighted_sum<scalar_t>(out.mutable_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                                       c.const_data_ptr<scalar_t>(), W.size(0), W.size(1));
  });
}

// out[p] = <W_p, G> (W [P, J], G [J], both contiguous).
void dots_into(at::Tensor out, const at::Tensor& W, const at::Tensor& G) {
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "gated_paths_dots", [&] {
    fixed_order_dots<scalar_t>(out.mutable_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                               G.const_data_ptr<scalar_t>(), W.size(0), W.size(1));
  });
}

void mul_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mul_out(out, a, b); }

std::tuple<at::Tensor, at::Tensor> gated_paths_fwd(const at::Tensor& x_in, const at::Tensor& W_in,
                                                   const at::Tensor& c_in) {
  const GatedDims d = check_gated_paths_inputs(x_in, W_in, c_in, "gated_paths_fwd");
  const at::Tensor x = x_in.contiguous(), W = W_in.contiguous(), c = c_in.contiguous();
  at::Tensor y = new_output({d.B, d.O}, x.options());
  const int64_t Bw = rows_to_write("gated_paths_fwd", d.B);  // all rows, except in the test of the NaN fill
  if (d.gate == Gate::Path) {
    at::Tensor W_eff = new_output({d.O, d.I}, x.options());
    weighted_sum_into(W_eff.view({d.O * d.I}), W.view({d.P, d.O * d.I}), c);
    mm_into(y.narrow(0, 0, Bw), x.narrow(0, 0, Bw), W_eff.t());
    return {y, W_eff};
  }
  if (d.gate == Gate::Neuron) {
    at::Tensor Z = new_output({d.B, d.P * d.O}, x.options());
    mm_into(Z, x, W.view({d.P * d.O, d.I}).t());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_paths_fwd", [&] {
      const scalar_t* z = Z.const_data_ptr<scalar_t>();
      const scalar_t* g = c.const_data_ptr<scalar_t>();
      scalar_t* out = y.mutable_data_ptr<scalar_t>();
      const int64_t P = d.P, O = d.O;
      at::parallel_for(0, Bw, 16, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t* yr = out + b * O;
          for (int64_t o = 0; o < O; ++o) yr[o] = 0;
          for (int64_t p = 0; p < P; ++p) {
            const scalar_t* zr = z + (b * P + p) * O;
            const scalar_t* gr = g + (b * P + p) * O;
            for (int64_t o = 0; o < O; ++o) yr[o] += gr[o] * zr[o];
          }
        }
      });
    });
    return {y, Z};
  }
  // Sample gates: X~ = c (x) x folded into the reduction dimension, one GEMM over P*D_in.
  at::Tensor Xt = at::empty({d.B, d.P * d.I}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_paths_fwd", [&] {
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    const scalar_t* g = c.const_data_ptr<scalar_t>();
    scalar_t* xt = Xt.mutable_data_ptr<scalar_t>();
    const int64_t P = d.P, I = d.I;
    at::parallel_for(0, d.B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t p = 0; p < P; ++p) {
          const scalar_t gp = g[b * P + p];
          scalar_t* dst = xt + (b * P + p) * I;
          const scalar_t* src = xs + b * I;
          for (int64_t i = 0; i < I; ++i) dst[i] = gp * src[i];
        }
    });
  });
  at::Tensor Wcat = new_output({d.O, d.P * d.I}, x.options());
  Wcat.view({d.O, d.P, d.I}).copy_(W.permute({1, 0, 2}));
  mm_into(y.narrow(0, 0, Bw), Xt.narrow(0, 0, Bw), Wcat.t());
  return {y, Wcat};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gated_paths_bwd(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                               const at::Tensor& W_in, const at::Tensor& c_in,
                                                               const at::Tensor& aux_in, bool need_x, bool need_W,
                                                               bool need_c) {
  const GatedDims d = check_gated_paths_inputs(x_in, W_in, c_in, "gated_paths_bwd");
  TORCH_CHECK_VALUE(dy_in.dim() == 2 && dy_in.size(0) == d.B && dy_in.size(1) == d.O,
                    "gated_paths_bwd: grad_y must be [B, D_out] = [", d.B, ", ", d.O, "], got shape ", dy_in.sizes());
  TORCH_CHECK_TYPE(dy_in.scalar_type() == x_in.scalar_type() && aux_in.scalar_type() == x_in.scalar_type(),
                   "gated_paths_bwd: grad_y and aux must have the dtype of x (", x_in.scalar_type(), "), got ",
                   dy_in.scalar_type(), " and ", aux_in.scalar_type());
  TORCH_CHECK_VALUE(dy_in.device().type() == at::kCPU && aux_in.device().type() == at::kCPU,
                    "gated_paths_bwd: grad_y and aux must be on the CPU");
  const at::Tensor dy = dy_in.contiguous(), x = x_in.contiguous(), W = W_in.contiguous(), c = c_in.contiguous();
  const at::Tensor aux = aux_in.contiguous();
  const int64_t B = d.B, P = d.P, O = d.O, I = d.I;
  // Gradients that were not asked for come back as zeros of the right shape.
  auto grad_output = [&](bool needed, const at::Tensor& like) {
    return needed ? new_output(like.sizes(), like.options()) : new_zero_output(like.sizes(), like.options());
  };
  at::Tensor dx = grad_output(need_x, x), dW = grad_output(need_W, W), dc = grad_output(need_c, c);
  const int64_t Bw = rows_to_write("gated_paths_bwd", B);  // rows of dx: all, except in the test of the NaN fill
  if (d.gate == Gate::Path) {
    TORCH_CHECK_VALUE(aux.sizes() == at::IntArrayRef({O, I}), "gated_paths_bwd: aux must be W_eff [", O, ", ", I,
                      "] for path gates, got shape ", aux.sizes());
    if (need_x) mm_into(dx.narrow(0, 0, Bw), dy.narrow(0, 0, Bw), aux);
    if (need_W || need_c) {
      at::Tensor G = at::empty({O, I}, x.options());
      mm_into(G, dy.t(), x);
      if (need_c) dots_into(dc, W.view({P, O * I}), G.view({O * I}));
      if (need_W) mul_into(dW.view({P, O * I}), c.view({P, 1}), G.view({1, O * I}));
    }
  } else if (d.gate == Gate::Neuron) {
    TORCH_CHECK_VALUE(aux.sizes() == at::IntArrayRef({B, P * O}), "gated_paths_bwd: aux must be Z [", B, ", ", P * O,
                      "] for neuron gates, got shape ", aux.sizes());
    at::Tensor dZ = at::empty({B, P * O}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_paths_bwd", [&] {
      const scalar_t* g = c.const_data_ptr<scalar_t>();
      const scalar_t* z = aux.const_data_ptr<scalar_t>();
      const scalar_t* gy = dy.const_data_ptr<scalar_t>();
      scalar_t* dz = dZ.mutable_data_ptr<scalar_t>();
      scalar_t* dcp = need_c ? dc.mutable_data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          for (int64_t p = 0; p < P; ++p) {
            const int64_t off = (b * P + p) * O;
            const scalar_t* gyr = gy + b * O;
            for (int64_t o = 0; o < O; ++o) dz[off + o] = g[off + o] * gyr[o];
            if (dcp)
              for (int64_t o = 0; o < O; ++o) dcp[off + o] = z[off + o] * gyr[o];
          }
      });
    });
    if (need_x) mm_into(dx.narrow(0, 0, Bw), dZ.narrow(0, 0, Bw), W.view({P * O, I}));
    if (need_W) mm_into(dW.view({P * O, I}), dZ.t(), x);
  } else {
    TORCH_CHECK_VALUE(aux.sizes() == at::IntArrayRef({O, P * I}), "gated_paths_bwd: aux must be Wcat [", O, ", ",
                      P * I, "] for sample gates, got shape ", aux.sizes());
    if (need_x || need_c) {
      at::Tensor dXt = at::empty({B, P * I}, x.options());
      mm_into(dXt, dy, aux);
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_paths_bwd", [&] {
        const scalar_t* g = c.const_data_ptr<scalar_t>();
        const scalar_t* xs = x.const_data_ptr<scalar_t>();
        const scalar_t* dxt = dXt.const_data_ptr<scalar_t>();
        scalar_t* dxp = need_x ? dx.mutable_data_ptr<scalar_t>() : nullptr;
        scalar_t* dcp = need_c ? dc.mutable_data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            const scalar_t* xr = xs + b * I;
            const bool write_x = dxp && b < Bw;
            if (write_x)
              for (int64_t i = 0; i < I; ++i) dxp[b * I + i] = 0;
            for (int64_t p = 0; p < P; ++p) {
              const scalar_t* r = dxt + (b * P + p) * I;
              if (write_x) {
                const scalar_t gp = g[b * P + p];
                for (int64_t i = 0; i < I; ++i) dxp[b * I + i] += gp * r[i];
              }
              if (dcp) {
                scalar_t s = 0;
                for (int64_t i = 0; i < I; ++i) s += xr[i] * r[i];
                dcp[b * P + p] = s;
              }
            }
          }
        });
      });
    }
    if (need_W) {
      at::Tensor dYt = at::empty({B, P * O}, x.options());  // c[b,p] dy[b,o]
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_paths_bwd", [&] {
        const scalar_t* g = c.const_data_ptr<scalar_t>();
        const scalar_t* gy = dy.const_data_ptr<scalar_t>();
        scalar_t* out = dYt.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b)
            for (int64_t p = 0; p < P; ++p) {
              const scalar_t gp = g[b * P + p];
              for (int64_t o = 0; o < O; ++o) out[(b * P + p) * O + o] = gp * gy[b * O + o];
            }
        });
      });
      mm_into(dW.view({P * O, I}), dYt.t(), x);
    }
  }
  return {dx, dW, dc};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("gated_paths_fwd", &gated_paths_fwd);
  m.impl("gated_paths_bwd", &gated_paths_bwd);
}

}  // namespace rnnofrnns
