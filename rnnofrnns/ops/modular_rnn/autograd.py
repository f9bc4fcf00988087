"""Fake (meta) implementations and autograd for the fused backends of modular_rnn.

Every fused backend is a pair of ops with the same schema:
  fwd(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, save_pre) -> (states, pre)
  bwd(grad_states, W, L_blocks, L_index, h0, states, pre, alpha, nonlinearity, form,
      need_W_grad, need_L_grad) -> (grad_drive, grad_W, grad_L_blocks, grad_h0)
states is [T, B, p*n] (h_1..h_T); pre holds the rate form's pre-activations
(empty unless save_pre and form == "rate"). `register_op_pair` gives a pair its fake implementations (so
torch.compile can trace callers) and its autograd formula.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch

from .._common import guard_double_backward


def _fwd_fake(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, save_pre):
    T, B, H = drive.shape
    states = drive.new_empty(T, B, H)
    pre = drive.new_empty(T if (save_pre and form == "rate") else 0, B, H)
    return states, pre


def _bwd_fake(grad_states, W, L_blocks, L_index, h0, states, pre, alpha, nonlinearity, form, need_W_grad, need_L_grad):
    return torch.empty_like(states), torch.empty_like(W), torch.empty_like(L_blocks), torch.empty_like(h0)


def register_op_pair(fwd_name: str, bwd_name: str) -> None:
    """Register fake implementations for both ops ("ns::name") and autograd for the forward op."""
    torch.library.register_fake(fwd_name)(_fwd_fake)
    torch.library.register_fake(bwd_name)(_bwd_fake)
    ns, name = bwd_name.split("::")
    bwd = getattr(getattr(torch.ops, ns), name).default

    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, torch.Tensor]) -> None:
        drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, save_pre = inputs
        states, pre = output
        ctx.save_for_backward(W, L_blocks, L_index, h0, states, pre)
        ctx.config = (alpha, nonlinearity, form)

    def backward(ctx: Any, grad_states: torch.Tensor, grad_pre: torch.Tensor):
        W, L_blocks, L_index, h0, states, pre = ctx.saved_tensors
        alpha, nonlinearity, form = ctx.config
        need = ctx.needs_input_grad
        with torch.no_grad():  # the kernel's result has no graph; guard_double_backward says so
            grad_drive, grad_W, grad_L, grad_h0 = bwd(
                grad_states, W, L_blocks, L_index, h0, states, pre, alpha, nonlinearity, form, need[1], need[2]
            )
        grad_drive, grad_W, grad_L, grad_h0 = guard_double_backward(
            "modular_rnn", (grad_states, W, L_blocks, h0, states),
            (grad_drive if need[0] else None, grad_W if need[1] else None, grad_L if need[2] else None,
             grad_h0 if need[4] else None))
        return grad_drive, grad_W, grad_L, None, grad_h0, None, None, None, None

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)

