"""The backends of `modular_rnn`, registered with the op table of ops/_backend.py. Each takes
(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, feedback_step, feedback_alpha,
feedback_plan) checked by the functional; the fused ones share the preparation of their
operands (cayley.py)."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .._backend import register
from .cayley import kernel_operands
from .plan import FeedbackPlan
from .checks import check_block_index
from .reference import modular_rnn_reference


def area_rates(alpha: Union[float, torch.Tensor], p: int, like: torch.Tensor) -> torch.Tensor:
    """alpha as p per-area values [p] (a number or one value is broadcast) or, given per step,
    [T, B, p], of like's dtype and device; differentiable when alpha is a tensor that requires grad."""
    if not isinstance(alpha, torch.Tensor):
        return torch.full((p,), float(alpha), dtype=like.dtype, device=like.device)
    a = alpha.to(dtype=like.dtype, device=like.device)
    if a.dim() == 3:
        return a.contiguous()
    return a.reshape(1).expand(p) if a.numel() == 1 else a


@register("modular_rnn", "reference")
def _reference(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, feedback_step,
               feedback_alpha=None, feedback_plan=None) -> torch.Tensor:
    p = W.shape[0]  # the reference forms the plan's map densely (without a plan it makes one)
    if feedback_plan is None and not torch.compiler.is_compiling():
        check_block_index(L_index, p)
    a = area_rates(alpha, p, drive) if isinstance(alpha, torch.Tensor) else float(alpha)
    fa = area_rates(feedback_alpha, p, drive) if isinstance(feedback_alpha, torch.Tensor) else feedback_alpha
    return modular_rnn_reference(drive, W, L_blocks, L_index, h0, alpha=a, nonlinearity=nonlinearity, form=form,
                                 feedback_step=feedback_step, feedback_alpha=fa, feedback_plan=feedback_plan)


def _fused(op: Callable[[], object]):
    """A fused backend: the kernels' operands (the feedback step's factored form), then the op."""

    def run(drive: torch.Tensor, W: torch.Tensor, L_blocks: torch.Tensor, L_index: torch.Tensor,
            h0: Optional[torch.Tensor], alpha, nonlinearity: str, form: str, feedback_step: str,
            feedback_alpha=None, feedback_plan: Optional[FeedbackPlan] = None) -> torch.Tensor:
        p = W.shape[0]
        if h0 is None:
            h0 = drive.new_zeros(drive.shape[1], drive.shape[2])
        a = area_rates(alpha, p, drive)
        fa = a if feedback_alpha is None else area_rates(feedback_alpha, p, drive)
        # without a plan the cayley operands read (and check) the index: a graph break under compile
        step, blocks, index, S_inv = kernel_operands(L_blocks, L_index, fa, p, feedback_step, feedback_plan)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (drive, W, blocks, h0, a, S_inv))
        return op()(drive, W, blocks, index, h0, a, S_inv, nonlinearity, form, step, needs_grad)[0]

    return run


register("modular_rnn", "cpu")(_fused(lambda: torch.ops.rnnofrnns.modular_rnn_fwd))
register("modular_rnn", "triton")(_fused(lambda: torch.ops.rnnofrnns.modular_rnn_fwd_triton))
