// Host code of the modular recurrence's CPU ops: argument checks, outputs (through the one
// allocator of output.h), dispatch on the dtype, and the registration with torch.library.
#include "common.h"

namespace rnnofrnns {
// Hidden: every CPU build (avx512, avx2, default) is its own module with these same names.
namespace __attribute__((visibility("hidden"))) modular_rnn_cpu {

Shape shape_of(const at::Tensor& drive, const at::Tensor& W, const at::Tensor& L_blocks) {
  return Shape{drive.size(0), drive.size(1), W.size(0), W.size(1), L_blocks.size(0), drive.size(2)};
}

// alpha ([p] or [T, B, p]) as the data's dtype, contiguous, on the CPU (checked by
// check_modular_rnn_inputs).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> modular_rnn_fwd(
    const at::Tensor& drive_in, const at::Tensor& W_in, const at::Tensor& L_in, const at::Tensor& idx_in,
    const at::Tensor& h0_in, const at::Tensor& alpha_in, const at::Tensor& S_in, c10::string_view nonlinearity,
    c10::string_view form, c10::string_view step, bool save) {
  const Nonlinearity nl = parse_nonlinearity(nonlinearity);
  const Form fm = parse_form(form);
  const Step st = parse_step(step);
  check_modular_rnn_inputs(drive_in, W_in, L_in, idx_in, h0_in, alpha_in, S_in, st, at::kCPU);
  const at::Tensor drive = drive_in.contiguous(), W = W_in.contiguous(), Lb = L_in.contiguous();
  const at::Tensor h0 = h0_in.contiguous(), alpha = alpha_in.contiguous();
  const Feedback fb = make_feedback(st, idx_in.contiguous(), S_in.size(0), W.size(0));
  const at::Tensor idx = idx_in.slice(1, 0, 2).contiguous();  // (target, source) per block
  const at::Tensor S_inv = S_in.contiguous();
  const Shape s = shape_of(drive, W, Lb);
  at::Tensor states = new_output({s.T, s.B, s.H}, drive.options());
  const bool keep_pre = save && fm == Form::Rate, keep_z = save && fb.step != Step::Euler;
  const bool keep_r = save && fb.step == Step::Star;
  at::Tensor pre = new_output({keep_pre ? s.T : 0, s.B, s.H}, drive.options());
  // the Cayley step's saved state: z_t [T, B, p*n] for the dense map, the stars' s_hub and r [T, B, m*n]
  const int64_t mn = fb.stars() * s.n;
  at::Tensor z = new_output({keep_z ? s.T : 0, s.B, fb.step == Step::Star ? mn : s.H}, drive.options());
  at::Tensor r = new_output({keep_r ? s.T : 0, s.B, fb.step == Step::Star ? mn : s.n}, drive.options());
  Shape written = s;
  written.T = rows_to_write("modular_rnn_fwd", s.T);  // all steps, except in the test of the NaN fill
  AT_DISPATCH_FLOATING_TYPES(drive.scalar_type(), "modular_rnn_fwd", [&] {
    forward_kernel<scalar_t>(drive.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                             Lb.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                             h0.const_data_ptr<scalar_t>(),
                             AreaRates<scalar_t>{alpha.const_data_ptr<scalar_t>(), alpha.dim() == 3, s.B, s.p},
                             fb.step == Step::Star ? S_inv.const_data_ptr<scalar_t>() : nullptr,
                             states.mutable_data_ptr<scalar_t>(),
                             keep_pre ? pre.mutable_data_ptr<scalar_t>() : nullptr,
                             keep_z ? z.mutable_data_ptr<scalar_t>() : nullptr,
                             keep_r ? r.mutable_data_ptr<scalar_t>() : nullptr, written, nl, fm, fb);
  });
  return {states, pre, z, r};
}

void check_saved(const char* name, const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& states) {
  TORCH_CHECK_VALUE(t.sizes() == shape && t.scalar_type() == states.scalar_type() && t.device() == states.device(),
                    "modular_rnn_bwd: ", name, " must be the forward's saved tensor of shape ", shape,
                    ", got shape ", t.sizes(), " (run the forward with save=True)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modular_rnn_bwd(
    const at::Tensor& grad_states_in, const at::Tensor& W_in, const at::Tensor& L_in, const at::Tensor& idx_in,
    const at::Tensor& h0_in, const at::Tensor& alpha_in, const at::Tensor& S_in, const at::Tensor& states_in,
    const at::Tensor& pre_in, const at::Tensor& z_in, const at::Tensor& r_in, c10::string_view nonlinearity,
    c10::string_view form, c10::string_view step, bool need_W_grad, bool need_L_grad,
    bool need_alpha_grad) {
  const Nonlinearity nl = parse_nonlinearity(nonlinearity);
  const Form fm = parse_form(form);
  const Step st = parse_step(step);
  // states has the drive's shape [T, B, p*n]
  check_modular_rnn_inputs(states_in, W_in, L_in, idx_in, h0_in, alpha_in, S_in, st, at::kCPU);
  const Feedback fb = make_feedback(st, idx_in.contiguous(), S_in.size(0), W_in.size(0));
  TORCH_CHECK_VALUE(grad_states_in.sizes() == states_in.sizes(), "modular_rnn_bwd: grad_states must have shape ",
                    states_in.sizes(), ", got ", grad_states_in.sizes());
  TORCH_CHECK_TYPE(grad_states_in.scalar_type() == states_in.scalar_type(), "modular_rnn_bwd: grad_states must be ",
                   states_in.scalar_type(), ", got ", grad_states_in.scalar_type());
  TORCH_CHECK_VALUE(grad_states_in.device() == states_in.device(), "modular_rnn_bwd: grad_states must be on ",
                    states_in.device(), ", got ", grad_states_in.device());
  const auto full = states_in.sizes();
  if (fm == Form::Rate) check_saved("pre", pre_in, full, states_in);
  const std::vector<int64_t> hub_shape{states_in.size(0), states_in.size(1), fb.stars() * W_in.size(1)};
  if (fb.step == Step::Dense) check_saved("z", z_in, full, states_in);
  if (fb.step == Step::Star) {
    check_saved("z", z_in, hub_shape, states_in);
    check_saved("r", r_in, hub_shape, states_in);
  }
  const at::Tensor grad_states = grad_states_in.contiguous(), W = W_in.contiguous(), Lb = L_in.contiguous();
  const at::Tensor idx = idx_in.slice(1, 0, 2).contiguous(), h0 = h0_in.contiguous(), states = states_in.contiguous();
  const at::Tensor pre = pre_in.contiguous(), z = z_in.contiguous(), r = r_in.contiguous();
  const at::Tensor alpha = alpha_in.contiguous(), S_inv = S_in.contiguous();
  const Shape s = shape_of(states, W, Lb);
  at::Tensor grad_drive = new_output({s.T, s.B, s.H}, states.options());
  at::Tensor grad_h0 = new_output({s.B, s.H}, states.options());
  // Weight gradients that are not asked for are returned as zeros.
  at::Tensor grad_W = need_W_grad ? new_output(W.sizes(), W.options()) : new_zero_output(W.sizes(), W.options());
  at::Tensor grad_L = need_L_grad ? new_output(Lb.sizes(), Lb.options()) : new_zero_output(Lb.sizes(), Lb.options());
  at::Tensor grad_alpha = need_alpha_grad ? new_output(alpha.sizes(), alpha.options())
                                          : new_zero_output(alpha.sizes(), alpha.options());
  at::Tensor grad_S = fb.step == Step::Star ? new_output(S_inv.sizes(), S_inv.options())
                                            : new_zero_output(S_inv.sizes(), S_inv.options());
  Shape written = s;
  written.T = rows_to_write("modular_rnn_bwd", s.T);  // all steps, except in the test of the NaN fill
  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "modular_rnn_bwd", [&] {
    backward_kernel<scalar_t>(grad_states.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(),
                              Lb.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                              h0.const_data_ptr<scalar_t>(),
                              AreaRates<scalar_t>{alpha.const_data_ptr<scalar_t>(), alpha.dim() == 3, s.B, s.p},
                              fb.step == Step::Star ? S_inv.const_data_ptr<scalar_t>() : nullptr,
                              states.const_data_ptr<scalar_t>(),
                              fm == Form::Rate ? pre.const_data_ptr<scalar_t>() : nullptr,
                              fb.step != Step::Euler ? z.const_data_ptr<scalar_t>() : nullptr,
                              fb.step == Step::Star ? r.const_data_ptr<scalar_t>() : nullptr,
                              grad_drive.mutable_data_ptr<scalar_t>(), grad_h0.mutable_data_ptr<scalar_t>(),
                              need_W_grad ? grad_W.mutable_data_ptr<scalar_t>() : nullptr,
                              need_L_grad ? grad_L.mutable_data_ptr<scalar_t>() : nullptr,
                              need_alpha_grad ? grad_alpha.mutable_data_ptr<scalar_t>() : nullptr,
                              fb.step == Step::Star ? grad_S.mutable_data_ptr<scalar_t>() : nullptr, written, nl, fm,
                              fb);
  });
  return {grad_drive, grad_W, grad_L, grad_h0, grad_alpha, grad_S};
}

}  // namespace modular_rnn_cpu

TORCH_LIBRARY_IMPL(rnnofrnns, CPU, m) {
  m.impl("modular_rnn_fwd", &modular_rnn_cpu::modular_rnn_fwd);
  m.impl("modular_rnn_bwd", &modular_rnn_cpu::modular_rnn_bwd);
}

}  // namespace rnnofrnns
