"""`modular_rnn`: the public entry point; checks arguments and dispatches to a backend."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .._backend import resolve_backend
from .cayley import kernel_operands
from .checks import check_block_index, check_modular_rnn_args
from .reference import modular_rnn_reference


FEEDBACK_STEPS = ("euler", "cayley")


def area_rates(alpha: Union[float, torch.Tensor], p: int, like: torch.Tensor) -> torch.Tensor:
    """alpha as p per-area values [p] of like's dtype and device (a number or one value is
    broadcast); differentiable when alpha is a tensor that requires grad."""
    if not isinstance(alpha, torch.Tensor):
        return torch.full((p,), float(alpha), dtype=like.dtype, device=like.device)
    a = alpha.to(dtype=like.dtype, device=like.device)
    return a.reshape(1).expand(p) if a.numel() == 1 else a


def modular_rnn(
    drive: torch.Tensor,
    W: torch.Tensor,
    L_blocks: torch.Tensor,
    L_index: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    *,
    alpha: Union[float, torch.Tensor] = 1.0,
    nonlinearity: str = "tanh",
    form: str = "rate",
    feedback_step: str = "euler",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Run the modular recurrence over all T steps and return the states h_1..h_T.

    Args:
        drive: [T, B, p*n] projected input u_t for every step.
        W: [p, n, n] intra-area blocks (the block-diagonal matrix).
        L_blocks: [k, n, n] inter-area blocks; k may be 0.
        L_index: int64 [k, 2]; block r sits at (target area, source area) = L_index[r].
        h0: [B, p*n] initial state, or None for zeros.
        alpha: the step dt/tau in (0, 1]: a number, or a tensor of p per-area values
            (alpha_i = dt/tau_i; differentiable).
        nonlinearity: "relu", "tanh" or "identity".
        form: "rate": F = phi(W h + u_t); "hopfield": F = W phi(h) + u_t.
        feedback_step: "euler": h_t = (1-a) h + a (F + L h);
            "cayley": h_t = C ((1-a) h + a F) with C = (I - A L/2)^{-1} (I + A L/2),
            A = diag(a): M-orthogonal when L is M-skew, so the feedback never expands.
        backend: "reference", "cpu", "triton" or None (RNNOFRNNS_BACKEND, else "cpu"
            for CPU tensors and "triton" for CUDA tensors).

    Returns:
        states [T, B, p*n] (empty for B = 0). Differentiable in drive, W, L_blocks, h0 and alpha.
    """
    if feedback_step not in FEEDBACK_STEPS:
        raise ValueError(f"feedback_step must be one of {FEEDBACK_STEPS}, got {feedback_step!r}")
    check_modular_rnn_args(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form)
    p = W.shape[0]
    name = resolve_backend(backend, drive.device, op="modular_rnn")
    if drive.shape[1] == 0:  # an empty batch: empty states, still tied to the drive's graph
        return drive.clone()
    if name == "reference":
        if not torch.compiler.is_compiling():
            check_block_index(L_index, p)
        a = area_rates(alpha, p, drive) if isinstance(alpha, torch.Tensor) else float(alpha)
        return modular_rnn_reference(drive, W, L_blocks, L_index, h0, alpha=a, nonlinearity=nonlinearity, form=form,
                                     feedback_step=feedback_step)
    if h0 is None:
        h0 = drive.new_zeros(drive.shape[1], drive.shape[2])
    a = area_rates(alpha, p, drive)
    if feedback_step == "cayley":
        check_block_index(L_index, p)  # the operands below read the index
    step, hub, blocks, index, S_inv = kernel_operands(L_blocks, L_index, a, p, feedback_step)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (drive, W, blocks, h0, a, S_inv))
    op = torch.ops.rnnofrnns.modular_rnn_fwd if name == "cpu" else torch.ops.rnnofrnns.modular_rnn_fwd_triton
    return op(drive, W, blocks, index, h0, a, S_inv, nonlinearity, form, step, hub, needs_grad)[0]
