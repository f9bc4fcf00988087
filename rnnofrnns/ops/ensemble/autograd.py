"""Fake implementations and autograd of the cpu ensemble ops (csrc/cpu/ensemble_*.cpp)."""
from __future__ import annotations

from typing import Any, Tuple

import torch

from .._common import guard_double_backward


def _scale_by_instance(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    return grad * grad_loss.view(-1, *([1] * (grad.dim() - 1)))


def register_ops() -> None:
    """Fake implementations (for torch.compile) and autograd formulas of the four cpu ops."""
    @torch.library.register_fake("rnnofrnns::ensemble_drive_fwd")
    def _(x, W_x):
        I, B, T, F = x.shape
        return x.new_empty(T, B, I * W_x.shape[1])

    @torch.library.register_fake("rnnofrnns::ensemble_drive_bwd")
    def _(grad_drive, x, W_x, need_x, need_W):
        return (x.new_empty(x.shape) if need_x else x.new_empty(0)), W_x.new_empty(W_x.shape)

    @torch.library.register_fake("rnnofrnns::ensemble_readout_loss")
    def _(h, W_y, b, y, relu):
        return h.new_empty(W_y.shape[0]), h.new_empty(h.shape), W_y.new_empty(W_y.shape), b.new_empty(b.shape)

    @torch.library.register_fake("rnnofrnns::ensemble_loss")
    def _(x, W_x, W_h, W_y, b, y, relu_hidden, relu_out, need_grad):
        m = W_x.shape[0] if need_grad else 0
        return (y.new_empty(y.shape[0]), W_x.new_empty(m, *W_x.shape[1:]), W_h.new_empty(m, *W_h.shape[1:]),
                W_y.new_empty(m, *W_y.shape[1:]), b.new_empty(m, *b.shape[1:]))

    def drive_setup(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    def drive_backward(ctx: Any, grad: torch.Tensor):
        x, W_x = ctx.saved_tensors
        need = ctx.needs_input_grad
        with torch.no_grad():  # the kernel's result has no graph; guard_double_backward says so
            gx, gW = torch.ops.rnnofrnns.ensemble_drive_bwd(grad, x, W_x, need[0], need[1])
        return guard_double_backward("ensemble_drive", (grad, x, W_x),
                                     (gx if need[0] else None, gW if need[1] else None))

    torch.library.register_autograd("rnnofrnns::ensemble_drive_fwd", drive_backward, setup_context=drive_setup)

    def loss_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
        ctx.save_for_backward(*output[1:])
        ctx.I = inputs[1].shape[0]

    def loss_backward(ctx: Any, grad_loss: torch.Tensor, *unused: torch.Tensor):
        gh, gW, gb = ctx.saved_tensors
        # The usual case, loss.sum().backward(): no rescaling pass over grad_h. Only for plain
        # eager tensors (traced fake/functional tensors cannot be branched on).
        if type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling() and bool((grad_loss == 1).all()):
            grads = (gh, gW, gb)
        else:
            T, B, H = gh.shape
            grads = ((gh.view(T, B, ctx.I, H // ctx.I) * grad_loss[None, None, :, None]).view(T, B, H),
                     gW * grad_loss[:, None, None], gb * grad_loss[:, None])
        # the saved gradients are outputs of the forward kernel, not functions of the weights
        return (*guard_double_backward("ensemble_readout_loss", (grad_loss, gh, gW, gb), grads), None, None)

    torch.library.register_autograd("rnnofrnns::ensemble_readout_loss", loss_backward, setup_context=loss_setup)

    def fused_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
        ctx.have_grads = inputs[-1]
        ctx.save_for_backward(*output[1:])

    def fused_backward(ctx: Any, grad_loss: torch.Tensor, *unused: torch.Tensor):
        if not ctx.have_grads:
            raise RuntimeError("ensemble_loss was called with need_grad=False, so it has no gradients to give")
        grads = [_scale_by_instance(g, grad_loss) for g in ctx.saved_tensors]
        # the saved gradients are outputs of the forward kernel, not functions of the weights
        return (None, *guard_double_backward("ensemble_loss", (grad_loss, *ctx.saved_tensors), grads),
                None, None, None, None)

    torch.library.register_autograd("rnnofrnns::ensemble_loss", fused_backward, setup_context=fused_setup)
