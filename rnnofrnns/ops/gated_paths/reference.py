"""The reference of the gated multi-path matmul: a plain loop over the paths."""
from __future__ import annotations

import torch


def gate_of_path(c: torch.Tensor, p: int) -> torch.Tensor:
    """Path p's gate, shaped to broadcast against [B, D_out]: c[p], c[:, p, None] or c[:, p]."""
    if c.dim() == 1:
        return c[p]
    if c.dim() == 2:
        return c[:, p, None]
    return c[:, p]


def gated_paths_reference(x: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """y = sum_p c_p * (W_p x) for x [B, D_in], W [P, D_out, D_in] and c [P], [B, P] or [B, P, D_out]."""
    y = None
    for p in range(W.shape[0]):
        term = gate_of_path(c, p) * (x @ W[p].T)
        y = term if y is None else y + term
    return y
