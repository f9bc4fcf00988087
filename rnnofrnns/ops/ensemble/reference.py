"""Dense references of the ensemble ops: einsum projections and the composition of the
modular_rnn reference with them. The ground truth the cpu backend is tested against."""
from __future__ import annotations

import torch

from ..modular_rnn.reference import modular_rnn_reference


def ensemble_drive_reference(x: torch.Tensor, W_x: torch.Tensor) -> torch.Tensor:
    I, B, T, F = x.shape
    return torch.einsum("ibtf,inf->tbin", x, W_x).reshape(T, B, I * W_x.shape[1])


def ensemble_readout_loss_reference(h: torch.Tensor, W_y: torch.Tensor, b: torch.Tensor, y: torch.Tensor,
                                    relu: bool) -> torch.Tensor:
    T, B, _ = h.shape
    I, n, F = W_y.shape
    out = torch.einsum("tbin,inf->ibtf", h.reshape(T, B, I, n), W_y) + b[:, None, None, :]
    if relu:
        out = torch.relu(out)
    return (out - y).square().mean(dim=(1, 2, 3))


def ensemble_loss_reference(x: torch.Tensor, W_x: torch.Tensor, W_h: torch.Tensor, W_y: torch.Tensor,
                            b: torch.Tensor, y: torch.Tensor, relu_hidden: bool, relu_out: bool) -> torch.Tensor:
    n = W_h.shape[1]
    h = modular_rnn_reference(ensemble_drive_reference(x, W_x), W_h, W_h.new_zeros(0, n, n),
                              torch.zeros(0, 2, dtype=torch.int64, device=x.device), alpha=1.0,
                              nonlinearity="relu" if relu_hidden else "identity", form="hopfield")
    return ensemble_readout_loss_reference(h, W_y, b, y, relu_out)
