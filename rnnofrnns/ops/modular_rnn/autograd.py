"""Fake (meta) implementations and autograd for the fused backends of modular_rnn.

Every fused backend is a pair of ops with the same schema:
  fwd(drive, W, L_blocks, L_index, h0, alpha, S_inv, nonlinearity, form, step, save)
      -> (states, pre, z, r)
  bwd(grad_states, W, L_blocks, L_index, h0, alpha, S_inv, states, pre, z, r, nonlinearity, form,
      step, need_W_grad, need_L_grad, need_alpha_grad) -> (grad_drive, grad_W, grad_L_blocks, grad_h0, grad_alpha, grad_S_inv)
alpha is [p] (one value per area). step is "euler" (L_blocks = L), "star" (L_blocks = P of a
product of m stars, L_index [k, 4] = (target, source, star, hub), S_inv [m, n, n] their Schur
complements' inverses) or "dense" (L_blocks = the p*p blocks of C); see cayley.py. states is
[T, B, p*n] (h_1..h_T); with save, pre holds the rate form's pre-activations, z the dense
Cayley map's pre-feedback states z_t (the stars' hub solutions s_t, [T, B, m*n], from which the
backward rebuilds z_t) and r the stars' hub sums ([T, B, m*n]); each is empty when not needed. `register_op_pair` gives a pair its fake implementations (so
torch.compile can trace callers) and its autograd formula.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch

from .._common import guard_double_backward


def _fwd_fake(drive, W, L_blocks, L_index, h0, alpha, S_inv, nonlinearity, form, step, save):
    T, B, H = drive.shape
    states = drive.new_empty(T, B, H)
    hubs = S_inv.shape[0] * W.shape[1]  # m stars of n units
    pre = drive.new_empty(T if (save and form == "rate") else 0, B, H)
    z = drive.new_empty(T if (save and step != "euler") else 0, B, hubs if step == "star" else H)
    r = drive.new_empty(T if (save and step == "star") else 0, B, hubs if step == "star" else W.shape[1])
    return states, pre, z, r


def _bwd_fake(grad_states, W, L_blocks, L_index, h0, alpha, S_inv, states, pre, z, r, nonlinearity, form, step,
              need_W_grad, need_L_grad, need_alpha_grad):
    return (states.new_empty(states.shape), W.new_empty(W.shape), L_blocks.new_empty(L_blocks.shape), h0.new_empty(h0.shape),
            alpha.new_empty(alpha.shape), S_inv.new_empty(S_inv.shape))


def register_op_pair(fwd_name: str, bwd_name: str) -> None:
    """Register fake implementations for both ops ("ns::name") and autograd for the forward op."""
    torch.library.register_fake(fwd_name)(_fwd_fake)
    torch.library.register_fake(bwd_name)(_bwd_fake)
    ns, name = bwd_name.split("::")
    bwd = getattr(getattr(torch.ops, ns), name).default

    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
        drive, W, L_blocks, L_index, h0, alpha, S_inv, nonlinearity, form, step, save = inputs
        states, pre, z, r = output
        ctx.save_for_backward(W, L_blocks, L_index, h0, alpha, S_inv, states, pre, z, r)
        ctx.config = (nonlinearity, form, step)
        # pre, z and r are saved for the backward, never used downstream: no zero gradients of
        # their full size (a [T, B, p*n] allocation and fill per call) for them
        ctx.set_materialize_grads(False)

    def backward(ctx: Any, grad_states: torch.Tensor, *unused: torch.Tensor):
        W, L_blocks, L_index, h0, alpha, S_inv, states, pre, z, r = ctx.saved_tensors
        nonlinearity, form, step = ctx.config
        need = ctx.needs_input_grad
        if grad_states is None:  # the states were not used (gradients are not materialised)
            grad_states = torch.zeros_like(states)
        with torch.no_grad():  # the kernel's result has no graph; guard_double_backward says so
            grads = bwd(grad_states, W, L_blocks, L_index, h0, alpha, S_inv, states, pre, z, r, nonlinearity, form,
                        step, need[1], need[2], need[5])
        wanted = (need[0], need[1], need[2], need[4], need[5], need[6])
        grad_drive, grad_W, grad_L, grad_h0, grad_alpha, grad_S = guard_double_backward(
            "modular_rnn", (grad_states, W, L_blocks, h0, alpha, states),
            tuple(g if w else None for g, w in zip(grads, wanted)))
        return grad_drive, grad_W, grad_L, None, grad_h0, grad_alpha, grad_S, None, None, None, None

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)
