"""The dense reference of the modular recurrence: the ground truth every backend is tested against."""
from __future__ import annotations

from typing import Optional

import torch

from .._common import activation


def dense_feedback(L_blocks: torch.Tensor, L_index: torch.Tensor, p: int) -> torch.Tensor:
    """The dense [p*n, p*n] inter-area matrix with block r at (L_index[r, 0], L_index[r, 1])."""
    k, n, _ = L_blocks.shape
    dense = L_blocks.new_zeros(p, p, n, n).index_put((L_index[:, 0], L_index[:, 1]), L_blocks)
    return dense.permute(0, 2, 1, 3).reshape(p * n, p * n)


def modular_rnn_reference(
    drive: torch.Tensor,
    W: torch.Tensor,
    L_blocks: torch.Tensor,
    L_index: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    *,
    alpha: float = 1.0,
    nonlinearity: str = "tanh",
    form: str = "rate",
) -> torch.Tensor:
    """Materialise W (block diagonal) and L densely and loop over time in PyTorch.

    hopfield: h_t = (1-a) h_{t-1} + a (W phi(h_{t-1}) + L h_{t-1} + u_t)
    rate:     h_t = (1-a) h_{t-1} + a (phi(W h_{t-1} + u_t) + L h_{t-1})
    Returns the states h_1..h_T, [T, B, p*n]. Differentiable by autograd.
    """
    phi = activation(nonlinearity)
    B, H = drive.shape[1:]
    p = W.shape[0]
    Wd = torch.block_diag(*W)
    Ld = dense_feedback(L_blocks, L_index, p)
    h = drive.new_zeros(B, H) if h0 is None else h0
    out = []
    # unbind once: indexing drive[t] per step would make autograd build a full-size
    # zero gradient per step (O(T^2) memory traffic in the backward pass)
    for u in drive.unbind(0):
        if form == "hopfield":
            h = (1 - alpha) * h + alpha * (phi(h) @ Wd.T + h @ Ld.T + u)
        elif form == "rate":
            h = (1 - alpha) * h + alpha * (phi(h @ Wd.T + u) + h @ Ld.T)
        else:
            raise ValueError(f"form must be 'rate' or 'hopfield', got {form!r}")
        out.append(h)
    return torch.stack(out)
