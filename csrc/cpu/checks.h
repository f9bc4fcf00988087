// Argument checks at the C++ boundary of every op, in one message style: "op: name must be
// <what was expected>, got <what was given>". TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in
// Python as ValueError / TypeError. A direct call of torch.ops.rnnofrnns.* with bad arguments
// raises; it never reads out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

namespace rnnofrnns {

// --- shared by every op -------------------------------------------------------------------

using NamedTensor = std::pair<const char*, const at::Tensor*>;

// The first tensor is float32 or float64, the others have its dtype, and all are on `device`.
inline void check_float_tensors(const char* op, std::initializer_list<NamedTensor> ts,
                                c10::DeviceType device = at::kCPU) {
  const auto& [first, t0] = *ts.begin();
  const auto dt = t0->scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble, op, ": ", first, " must be float32 or float64, got ", dt);
  for (const auto& [name, t] : ts) {
    TORCH_CHECK_TYPE(t->scalar_type() == dt, op, ": ", name, " must have the dtype of ", first, " (", dt, "), got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->device().type() == device, op, ": ", name, " must be on ", device, ", got one on ",
                      t->device());
  }
}

// --- modular_rnn --------------------------------------------------------------------------

enum class Nonlinearity { Relu, Tanh, Identity };
enum class Form { Rate, Hopfield };

inline Nonlinearity parse_nonlinearity(c10::string_view s) {
  if (s == "relu") return Nonlinearity::Relu;
  if (s == "tanh") return Nonlinearity::Tanh;
  if (s == "identity") return Nonlinearity::Identity;
  TORCH_CHECK_VALUE(false, "modular_rnn: nonlinearity must be one of 'relu', 'tanh', 'identity', got '", s, "'");
}

enum class Step { Euler, Star, Dense };

inline Step parse_step(c10::string_view s) {
  if (s == "euler") return Step::Euler;
  if (s == "star") return Step::Star;
  if (s == "dense") return Step::Dense;
  TORCH_CHECK_VALUE(false, "modular_rnn: step must be 'euler', 'star' or 'dense', got '", s, "'");
}

inline Form parse_form(c10::string_view s) {
  if (s == "rate") return Form::Rate;
  if (s == "hopfield") return Form::Hopfield;
  TORCH_CHECK_VALUE(false, "modular_rnn: form must be 'rate' or 'hopfield', got '", s, "'");
}

// Shapes, dtypes, devices, alpha ([p] or [T, B, p] values in (0, 1]), S_inv and every block index (in range,
// listed once, off the diagonal except for the dense Cayley map; for the stars, [k, 4] with each block's
// star in [0, m) for S_inv [m, n, n] and its hub, one hub per star, touched by the block).
inline void check_modular_rnn_inputs(const at::Tensor& drive, const at::Tensor& W, const at::Tensor& L_blocks,
                                     const at::Tensor& L_index, const at::Tensor& h0, const at::Tensor& alpha,
                                     const at::Tensor& S_inv, Step step, c10::DeviceType device) {
  TORCH_CHECK_VALUE(drive.dim() == 3, "modular_rnn: drive must be 3-D [T, B, p*n], got shape ", drive.sizes());
  TORCH_CHECK_VALUE(W.dim() == 3 && W.size(1) == W.size(2),
                    "modular_rnn: W must be [p, n, n] (square intra-area blocks), got shape ", W.sizes());
  TORCH_CHECK_VALUE(W.size(0) >= 1 && W.size(1) >= 1, "modular_rnn: W needs p >= 1 areas of n >= 1 units, got shape ",
                    W.sizes());
  const int64_t p = W.size(0), n = W.size(1), T = drive.size(0), B = drive.size(1);
  TORCH_CHECK_VALUE(T >= 1 && B >= 1, "modular_rnn: drive needs T >= 1 steps and B >= 1 rows, got shape ",
                    drive.sizes());
  TORCH_CHECK_VALUE(drive.size(2) == p * n, "modular_rnn: drive must be [T, B, p*n] = [", T, ", ", B, ", ", p * n,
                    "] for W of shape ", W.sizes(), ", got ", drive.sizes());
  TORCH_CHECK_VALUE(L_blocks.dim() == 3 && L_blocks.size(1) == n && L_blocks.size(2) == n,
                    "modular_rnn: L_blocks must be [k, ", n, ", ", n, "], got shape ", L_blocks.sizes());
  const int64_t k = L_blocks.size(0);
  const int64_t cols = step == Step::Star ? 4 : 2;
  TORCH_CHECK_VALUE(L_index.dim() == 2 && L_index.size(0) == k && L_index.size(1) == cols,
                    "modular_rnn: L_index must be [k, ", cols, "] = [", k, ", ", cols, "] to match L_blocks",
                    step == Step::Star ? " (target, source, star, hub per block for step 'star')" : "",
                    ", got shape ", L_index.sizes());
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == p * n, "modular_rnn: h0 must be [B, p*n] = [",
                    B, ", ", p * n, "], got shape ", h0.sizes());
  check_float_tensors("modular_rnn", {{"drive", &drive}, {"W", &W}, {"L_blocks", &L_blocks}, {"h0", &h0}}, device);
  TORCH_CHECK_TYPE(L_index.scalar_type() == at::kLong, "modular_rnn: L_index must be int64, got ",
                   L_index.scalar_type());
  TORCH_CHECK_VALUE(L_index.device().type() == device, "modular_rnn: L_index must be on ", device, ", got one on ",
                    L_index.device());
  TORCH_CHECK_VALUE((alpha.dim() == 1 && alpha.size(0) == p) ||
                        (alpha.dim() == 3 && alpha.size(0) == T && alpha.size(1) == B && alpha.size(2) == p),
                    "modular_rnn: alpha must be [p] = [", p, "] (one value per area) or [T, B, p] = [", T, ", ", B,
                    ", ", p, "] (one per step, row and area), got shape ", alpha.sizes());
  check_float_tensors("modular_rnn", {{"drive", &drive}, {"alpha", &alpha}}, device);
  if (device == at::kCPU) {
    const at::Tensor a = alpha.to(at::kDouble).contiguous();
    const double* av = a.const_data_ptr<double>();
    for (int64_t i = 0; i < a.numel(); ++i)
      TORCH_CHECK_VALUE(std::isfinite(av[i]) && av[i] > 0.0 && av[i] <= 1.0, "modular_rnn: alpha[", i,
                        alpha.dim() == 3 ? "] (flat index)" : "]", " must be in (0, 1], got ", av[i]);
  }
  if (step == Step::Star) {
    TORCH_CHECK_VALUE(S_inv.dim() == 3 && S_inv.size(0) >= 1 && S_inv.size(1) == n && S_inv.size(2) == n,
                      "modular_rnn: S_inv must be [m, ", n, ", ", n, "] (m >= 1 stars) for step 'star', got shape ",
                      S_inv.sizes());
    check_float_tensors("modular_rnn", {{"drive", &drive}, {"S_inv", &S_inv}}, device);
  }
  const int64_t m = step == Step::Star ? S_inv.size(0) : 0;
  std::vector<int64_t> hub_of_star(static_cast<size_t>(m), -1);
  const at::Tensor idx = L_index.contiguous();
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  std::vector<char> seen(static_cast<size_t>(p * p), 0);
  for (int64_t r = 0; r < k; ++r) {
    const int64_t tgt = ix[cols * r], src = ix[cols * r + 1];
    TORCH_CHECK_VALUE(tgt >= 0 && tgt < p && src >= 0 && src < p, "modular_rnn: L_index[", r, "] = (", tgt, ", ", src,
                      ") is out of range for p = ", p, " areas");
    TORCH_CHECK_VALUE(tgt != src || step == Step::Dense, "modular_rnn: L_index[", r, "] = (", tgt, ", ", src,
                      ") lies on the diagonal; intra-area weights belong in W");
    if (step == Step::Star) {
      const int64_t star = ix[cols * r + 2], hub = ix[cols * r + 3];
      TORCH_CHECK_VALUE(star >= 0 && star < m, "modular_rnn: L_index[", r, "] names star ", star,
                        ", outside [0, ", m, ") for S_inv of ", m, " stars");
      TORCH_CHECK_VALUE(tgt == hub || src == hub, "modular_rnn: L_index[", r, "] = (", tgt, ", ", src,
                        ") does not touch the hub area ", hub, " of its star ", star);
      int64_t& h = hub_of_star[static_cast<size_t>(star)];
      TORCH_CHECK_VALUE(h < 0 || h == hub, "modular_rnn: L_index[", r, "] gives star ", star, " the hub ", hub,
                        ", another block gave it ", h);
      h = hub;
    }
    char& s = seen[static_cast<size_t>(tgt * p + src)];
    TORCH_CHECK_VALUE(!s, "modular_rnn: L_index[", r, "] = (", tgt, ", ", src, ") is a duplicate block");
    s = 1;
  }
}

// --- gated_paths --------------------------------------------------------------------------

enum class Gate { Path, Sample, Neuron };

struct GatedDims {
  int64_t B, P, O, I;  // batch, paths, D_out, D_in
  Gate gate;
};

// x [B, D_in], W [P, D_out, D_in] and gates c of shape [P], [B, P] or [B, P, D_out].
inline GatedDims check_gated_paths_inputs(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c,
                                          const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [B, D_in], got shape ", x.sizes());
  TORCH_CHECK_VALUE(W.dim() == 3, op, ": W must be 3-D [P, D_out, D_in], got shape ", W.sizes());
  const int64_t B = x.size(0), I = x.size(1), P = W.size(0), O = W.size(1);
  TORCH_CHECK_VALUE(B >= 1 && I >= 1, op, ": x must be [B, D_in] with B, D_in >= 1, got shape ", x.sizes());
  TORCH_CHECK_VALUE(P >= 1 && O >= 1 && W.size(2) == I, op, ": W must be [P, D_out, D_in] = [P, D_out, ", I,
                    "] with P, D_out >= 1, got shape ", W.sizes());
  Gate gate;
  if (c.dim() == 1 && c.size(0) == P) {
    gate = Gate::Path;
  } else if (c.dim() == 2 && c.size(0) == B && c.size(1) == P) {
    gate = Gate::Sample;
  } else if (c.dim() == 3 && c.size(0) == B && c.size(1) == P && c.size(2) == O) {
    gate = Gate::Neuron;
  } else {
    TORCH_CHECK_VALUE(false, op, ": c must be [P] = [", P, "], [B, P] = [", B, ", ", P, "] or [B, P, D_out] = [", B,
                      ", ", P, ", ", O, "], got shape ", c.sizes());
  }
  check_float_tensors(op, {{"x", &x}, {"W", &W}, {"c", &c}});
  return {B, P, O, I, gate};
}

// --- the ensemble ops ---------------------------------------------------------------------

struct EnsDims {
  int64_t I, B, T, F, n;  // instances, batch, steps, features, hidden size
};

// x [I, B, T, F] (data or targets) and a weight W [I, n, F] of the same instances and features.
inline EnsDims check_ensemble_x_w(const char* op, const at::Tensor& x, const at::Tensor& W, const char* xname,
                                  const char* wname) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": ", xname, " must be 4-D [I, B, T, F], got shape ", x.sizes());
  TORCH_CHECK_VALUE(W.dim() == 3 && W.size(0) == x.size(0) && W.size(2) == x.size(3), op, ": ", wname,
                    " must be [I, n, F] = [", x.size(0), ", n, ", x.size(3), "], got shape ", W.sizes());
  return {x.size(0), x.size(1), x.size(2), x.size(3), W.size(1)};
}

}  // namespace rnnofrnns
