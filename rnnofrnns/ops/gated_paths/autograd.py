"""Fake implementations and autograd for the fused backends of gated_paths.

Every fused backend is a pair of ops with the same schema:
  fwd(x, W, c) -> (y, aux)
  bwd(grad_y, x, W, c, aux, need_x_grad, need_W_grad, need_c_grad) -> (grad_x, grad_W, grad_c)
aux is what the backward reuses: W_eff = sum_p c_p W_p [D_out, D_in] for path gates
[P]; for sample gates [B, P] the path-major weights Wcat [D_out, P*D_in] (cpu) or
nothing (Triton, whose kernels fold the gates into W's tiles in place); for neuron
gates [B, P, D_out] the per-path outputs Z [B, P*D_out].
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import torch

from .._common import guard_double_backward


def aux_shape(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor, weights_in_place: bool) -> Tuple[int, ...]:
    B = x.shape[0]
    P, D_out, D_in = W.shape
    if c.dim() == 1:
        return (D_out, D_in)
    if c.dim() == 3:
        return (B, P * D_out)
    return (0,) if weights_in_place else (D_out, P * D_in)


def register_op_pair(fwd_name: str, bwd_name: str, weights_in_place: bool) -> None:
    """Register fake implementations for both ops ("ns::name") and autograd for the forward op."""

    def fwd_fake(x, W, c):
        return x.new_empty(x.shape[0], W.shape[1]), x.new_empty(aux_shape(x, W, c, weights_in_place))

    def bwd_fake(grad_y, x, W, c, aux, need_x, need_W, need_c):
        return x.new_empty(x.shape), W.new_empty(W.shape), c.new_empty(c.shape)

    torch.library.register_fake(fwd_name)(fwd_fake)
    torch.library.register_fake(bwd_name)(bwd_fake)
    ns, name = bwd_name.split("::")
    bwd: Callable = getattr(getattr(torch.ops, ns), name).default

    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, torch.Tensor]) -> None:
        x, W, c = inputs
        ctx.save_for_backward(x, W, c, output[1])

    def backward(ctx: Any, grad_y: torch.Tensor, grad_aux: torch.Tensor):
        x, W, c, aux = ctx.saved_tensors
        need = ctx.needs_input_grad
        with torch.no_grad():  # the kernel's result has no graph; guard_double_backward says so
            gx, gW, gc = bwd(grad_y, x, W, c, aux, need[0], need[1], need[2])
        return guard_double_backward("gated_paths", (grad_y, x, W, c),
                                     (gx if need[0] else None, gW if need[1] else None, gc if need[2] else None))

    torch.library.register_autograd(fwd_name, backward, setup_context=setup_context)
