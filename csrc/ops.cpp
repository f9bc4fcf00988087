// The schemas of every compiled op of rnnofrnns, in one place. Each unit in cpu/ registers its
// CPU implementation (TORCH_LIBRARY_IMPL); the Triton ops register from Python
// (rnnofrnns/ops/*/triton_op.py) and the fake implementations and autograd formulas from
// rnnofrnns/ops/*/autograd.py.
#include <torch/library.h>

TORCH_LIBRARY(rnnofrnns, m) {
  m.def(
      "modular_rnn_fwd(Tensor drive, Tensor W, Tensor L_blocks, Tensor L_index, Tensor h0, Tensor alpha, "
      "Tensor S_inv, str nonlinearity, str form, str step, bool save) "
      "-> (Tensor states, Tensor pre, Tensor z, Tensor r)");
  m.def(
      "modular_rnn_bwd(Tensor grad_states, Tensor W, Tensor L_blocks, Tensor L_index, Tensor h0, Tensor alpha, "
      "Tensor S_inv, Tensor states, Tensor pre, Tensor z, Tensor r, str nonlinearity, str form, str step, "
      "bool need_W_grad, bool need_L_grad, bool need_alpha_grad) "
      "-> (Tensor grad_drive, Tensor grad_W, Tensor grad_L_blocks, Tensor grad_h0, Tensor grad_alpha, "
      "Tensor grad_S_inv)");
  m.def("gated_paths_fwd(Tensor x, Tensor W, Tensor c) -> (Tensor y, Tensor aux)");
  m.def(
      "gated_paths_bwd(Tensor grad_y, Tensor x, Tensor W, Tensor c, Tensor aux, bool need_x_grad, "
      "bool need_W_grad, bool need_c_grad) -> (Tensor grad_x, Tensor grad_W, Tensor grad_c)");
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
