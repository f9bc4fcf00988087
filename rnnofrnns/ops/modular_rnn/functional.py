"""`modular_rnn`: the public entry point; checks arguments and dispatches to a backend."""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import resolve_backend
from .checks import check_block_index, check_modular_rnn_args
from .reference import modular_rnn_reference


def modular_rnn(
    drive: torch.Tensor,
    W: torch.Tensor,
    L_blocks: torch.Tensor,
    L_index: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    *,
    alpha: float = 1.0,
    nonlinearity: str = "tanh",
    form: str = "rate",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Run the modular recurrence over all T steps and return the states h_1..h_T.

    Args:
        drive: [T, B, p*n] projected input u_t for every step.
        W: [p, n, n] intra-area blocks (the block-diagonal matrix).
        L_blocks: [k, n, n] inter-area blocks; k may be 0.
        L_index: int64 [k, 2]; block r sits at (target area, source area) = L_index[r].
        h0: [B, p*n] initial state, or None for zeros.
        alpha: Euler step dt/tau in (0, 1] (a number or a one-element tensor).
        nonlinearity: "relu", "tanh" or "identity".
        form: "rate": h_t = (1-a) h + a (phi(W h + u_t) + L h);
              "hopfield": h_t = (1-a) h + a (W phi(h) + L h + u_t).
        backend: "reference", "cpu", "triton" or None (RNNOFRNNS_BACKEND, else "cpu"
            for CPU tensors and "triton" for CUDA tensors).

    Returns:
        states [T, B, p*n] (empty for B = 0). Differentiable in drive, W, L_blocks and h0.
    """
    if isinstance(alpha, torch.Tensor):  # a 0-d tensor, as torch users pass hyperparameters
        if alpha.numel() != 1 or alpha.requires_grad:
            raise ValueError(f"alpha must be a number in (0, 1] or a one-element tensor without grad, "
                             f"got a tensor of shape {tuple(alpha.shape)}{' that requires grad' * alpha.requires_grad}")
        alpha = float(alpha)
    check_modular_rnn_args(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form)
    name = resolve_backend(backend, drive.device, op="modular_rnn")
    alpha = float(alpha)
    if drive.shape[1] == 0:  # an empty batch: empty states, still tied to the drive's graph
        return drive.clone()
    if name == "reference":
        if not torch.compiler.is_compiling():
            check_block_index(L_index, W.shape[0])
        return modular_rnn_reference(drive, W, L_blocks, L_index, h0, alpha=alpha, nonlinearity=nonlinearity, form=form)
    if h0 is None:
        h0 = drive.new_zeros(drive.shape[1], drive.shape[2])
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (drive, W, L_blocks, h0))
    if name == "cpu":
        op = torch.ops.rnnofrnns.modular_rnn_fwd
    else:
        op = torch.ops.rnnofrnns.modular_rnn_fwd_triton
    states, _ = op(drive, W, L_blocks, L_index, h0, alpha, nonlinearity, form, needs_grad)
    return states
