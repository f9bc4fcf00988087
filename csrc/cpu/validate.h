// Strict argument checks at the C++ boundary of the modular recurrence ops.
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <vector>

namespace rnnofrnns {

enum class Nonlinearity { Relu, Tanh, Identity };
enum class Form { Rate, Hopfield };

inline Nonlinearity parse_nonlinearity(c10::string_view s) {
  if (s == "relu") return Nonlinearity::Relu;
  if (s == "tanh") return Nonlinearity::Tanh;
  if (s == "identity") return Nonlinearity::Identity;
  TORCH_CHECK_VALUE(false, "modular_rnn: nonlinearity must be one of 'relu', 'tanh', 'identity', got '", s, "'");
}

inline Form parse_form(c10::string_view s) {
  if (s == "rate") return Form::Rate;
  if (s == "hopfield") return Form::Hopfield;
  TORCH_CHECK_VALUE(false, "modular_rnn: form must be 'rate' or 'hopfield', got '", s, "'");
}

inline void check_inputs(const at::Tensor& drive, const at::Tensor& W, const at::Tensor& L_blocks,
                         const at::Tensor& L_index, const at::Tensor& h0, double alpha, c10::DeviceType device) {
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
  TORCH_CHECK_VALUE(L_index.dim() == 2 && L_index.size(0) == k && L_index.size(1) == 2,
                    "modular_rnn: L_index must be [k, 2] = [", k, ", 2] to match L_blocks, got shape ",
                    L_index.sizes());
  TORCH_CHECK_VALUE(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == p * n, "modular_rnn: h0 must be [B, p*n] = [",
                    B, ", ", p * n, "], got shape ", h0.sizes());
  const auto dt = drive.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble, "modular_rnn: drive must be float32 or float64, got ", dt);
  TORCH_CHECK_TYPE(W.scalar_type() == dt && L_blocks.scalar_type() == dt && h0.scalar_type() == dt,
                   "modular_rnn: drive, W, L_blocks and h0 must share one dtype, got ", dt, ", ", W.scalar_type(),
                   ", ", L_blocks.scalar_type(), ", ", h0.scalar_type());
  TORCH_CHECK_TYPE(L_index.scalar_type() == at::kLong, "modular_rnn: L_index must be int64, got ",
                   L_index.scalar_type());
  for (const at::Tensor* t : {&drive, &W, &L_blocks, &L_index, &h0})
    TORCH_CHECK_VALUE(t->device().type() == device, "modular_rnn: all tensors must be on ", device, ", got one on ",
                      t->device());
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha > 0.0 && alpha <= 1.0, "modular_rnn: alpha must be in (0, 1], got ",
                    alpha);
  const at::Tensor idx = L_index.contiguous();
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  std::vector<char> seen(static_cast<size_t>(p * p), 0);
  for (int64_t r = 0; r < k; ++r) {
    const int64_t tgt = ix[2 * r], src = ix[2 * r + 1];
    TORCH_CHECK_VALUE(tgt >= 0 && tgt < p && src >= 0 && src < p, "modular_rnn: L_index[", r, "] = (", tgt, ", ", src,
                      ") is out of range for p = ", p, " areas");
    TORCH_CHECK_VALUE(tgt != src, "modular_rnn: L_index[", r, "] = (", tgt, ", ", src,
                      ") lies on the diagonal; intra-area weights belong in W");
    char& s = seen[static_cast<size_t>(tgt * p + src)];
    TORCH_CHECK_VALUE(!s, "modular_rnn: L_index[", r, "] = (", tgt, ", ", src, ") is a duplicate block");
    s = 1;
  }
}

}  // namespace rnnofrnns
